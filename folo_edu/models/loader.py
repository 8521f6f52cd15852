"""Model sources: turn what the user passed as ``model`` into a local HF folder.

Sources, tried in this order:
  None              the default model (SmolLM2-135M-Instruct, see default_model.py)
  an existing dir   a Hugging Face folder: config.json plus *.safetensors
  a .gguf file      converted once through transformers into a cached HF folder
  anything else     a hub id, looked up in the local HF cache (HF_HUB_OFFLINE honoured)

Weights are read from safetensors only (never pickles), and no checkpoint code runs.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


class ModelSourceError(ValueError):
    """The model source could not be resolved; the message says what was tried."""


def cache_dir() -> Path:
    """Where folo_edu keeps converted models: $FOLO_EDU_CACHE or ~/.cache/folo_edu."""
    return Path(os.environ.get("FOLO_EDU_CACHE", Path.home() / ".cache" / "folo_edu"))


def resolve_model_path(model: str | os.PathLike | None) -> Path:
    """Return a local HF folder for ``model``; raise ModelSourceError saying what was tried."""
    if model is None:
        from folo_edu.models.default_model import download_model

        return Path(download_model(quiet=True))
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model={model!r}: expected a folder, a .gguf file, a hub id or None")
    path = Path(model).expanduser()
    if path.is_dir():
        _check_hf_folder(path)
        return path
    if str(model).endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"model={str(model)!r}: tried a GGUF file, but no such file")
        return convert_gguf(path)
    looks_like_path = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
    if looks_like_path:
        raise ModelSourceError(f"model={str(model)!r}: tried a local folder, but no such "
                               "path exists (and it does not look like a hub id 'org/name')")
    return _resolve_hub_id(str(model))


def _check_hf_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelSourceError(f"model={str(path)!r}: tried a local HF folder, but it has no "
                               "config.json")
    if not list(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.iterdir())[:8]
        raise ModelSourceError(f"model={str(path)!r}: tried a local HF folder, but it has no "
                               f"*.safetensors weights (found {found}); folo_edu loads "
                               "safetensors only, never pickled .bin files")


def _resolve_hub_id(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        path = snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.jinja",
                                                          "*.txt", "*.model"],
                                 local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds; we explain them all
        how = "in the local HF cache (HF_HUB_OFFLINE=1)" if offline else "on the Hugging Face hub"
        raise ModelSourceError(
            f"model={repo_id!r}: not a local path or .gguf file, so tried it as a hub id "
            f"{how}, and that failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    _check_hf_folder(Path(path))
    return Path(path)


def resolve_config(config):
    """Find the checkpoint of a ModelConfig (or an EngineConfig's model) and attach it.

    This is where a model source is resolved: the default model may be downloaded and a
    GGUF file converted here, never when a config is built. For an EngineConfig it then
    runs the rules that need the checkpoint (``EngineConfig.finalize``). Returns
    ``config``; calling it again does nothing.
    """
    model_config = getattr(config, "model_config", config)
    if not model_config.resolved:
        path = resolve_model_path(model_config.model)
        model_config.attach(str(path), load_hf_config(path))
    if model_config is not config:
        config.finalize()
    return config


def eos_token_ids(path, hf_config, tokenizer=None) -> frozenset[int]:
    """Every id that ends generation: the tokenizer's EOS and the eos_token_id (an int or
    a list) of config.json and generation_config.json, as vLLM gathers them."""
    ids: set[int] = set()

    def add(value):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))

    add(getattr(tokenizer, "eos_token_id", None))
    add(getattr(hf_config, "eos_token_id", None))
    gen = Path(path) / "generation_config.json"
    if gen.is_file():
        import json

        add(json.loads(gen.read_text()).get("eos_token_id"))
    return frozenset(ids)


def load_safetensors_state(path: str | os.PathLike) -> dict:
    """All tensors of the *.safetensors files in a folder (or one file), by name.

    Any file that fails to load raises ModelSourceError naming that file, so a
    truncated or corrupt download is reported as such, not as a shape error later.
    """
    from safetensors.torch import load_file

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"model={str(path)!r}: tried to load *.safetensors weights, "
                               "but found none")
    state: dict = {}
    for file in files:
        try:
            tensors = load_file(str(file))
        except Exception as e:  # noqa: BLE001 - a corrupt file raises many kinds
            raise ModelSourceError(f"weights file {str(file)!r}: tried to load it as "
                                   f"safetensors, and that failed: {type(e).__name__}: {e}") from e
        twice = sorted(set(state) & set(tensors))
        if twice:
            raise ModelSourceError(f"weights file {str(file)!r}: tensors {twice[:3]} are also "
                                   "in another *.safetensors file of the folder")
        state.update(tensors)
    return state


def load_hf_config(path: str | os.PathLike):
    """Read config.json with transformers and check that folo_edu can run it."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001
        raise ModelSourceError(f"model={str(path)!r}: config.json could not be read: "
                               f"{type(e).__name__}: {e}") from e
    archs = getattr(config, "architectures", None) or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelSourceError(
            f"model={str(path)!r}: architectures={archs!r} is not supported; "
            f"expected one of {', '.join(SUPPORTED_ARCHITECTURES)}")
    return config


def convert_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """Dequantize a GGUF file through transformers into a cached safetensors HF folder.

    The folder is keyed by the file's name, size and mtime, so the conversion runs
    once. It holds config.json, model.safetensors, the tokenizer and its chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    out_dir = out_dir or cache_dir() / "gguf" / f"{gguf_path.stem}-{key.hexdigest()[:12]}"
    if (out_dir / "config.json").is_file() and list(out_dir.glob("*.safetensors")):
        return out_dir
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                     dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise ModelSourceError(f"model={str(gguf_path)!r}: tried to read it as GGUF through "
                               f"transformers and gguf, and that failed: "
                               f"{type(e).__name__}: {e}") from e
    # The weights are now dequantized floats: drop the GGUF quantizer so they save plainly.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    # Write into a private temp folder, then rename (atomic): a crash mid-way never
    # leaves a half folder behind, and two processes converting at once do not collide.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(out_dir)
    except OSError:
        if not (out_dir / "config.json").is_file():
            raise
        shutil.rmtree(tmp)  # another process finished the same conversion first
    return out_dir
