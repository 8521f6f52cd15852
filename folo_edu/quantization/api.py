"""The public M7 API: quantize a checkpoint to a GPTQ folder, and measure perplexity."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from folo_edu.quantization.quant_config import GPTQConfig

METHODS = ("gptq", "rtn")
DEFAULT_CALIBRATION = ("docstrings of the Python standard library's source files "
                       "(texts.docstring_text; none shares a 64-character run with the "
                       "evaluation text pydoc_data.topics)")


def quantize(model: str | None = None, out_dir: str | Path | None = None, method: str = "gptq",
             bits: int = 4, group_size: int = 128, desc_act: bool = False, sym: bool = True,
             calibration_text: str | list[list[int]] | None = None, num_samples: int = 128, seq_len: int = 512,
             damp_percent: float = 0.01, seed: int = 0, progress=print) -> Path:
    """Quantize ``model`` (a folder, .gguf, hub id, or None for the default) to a GPTQ
    checkpoint in ``out_dir`` that ``LLM(model=out_dir)`` loads; returns that folder.

    GPTQ calibrates on ``num_samples`` windows of ``seq_len`` tokens from
    ``calibration_text`` (default: the standard library's docstrings, DEFAULT_CALIBRATION;
    folo_edu.quantization.texts), or on the given samples if it is a list of token-id
    lists (for models without a tokenizer); RTN needs none. Every argument is checked
    before any long work starts.
    """
    from folo_edu.attention import get_backend
    from folo_edu.engine.llm_engine import load_tokenizer
    from folo_edu.models.decoder import DecoderSpec
    from folo_edu.models.loader import load_hf_config, resolve_model_path
    from folo_edu.models.weights import load_model
    from folo_edu.quantization.calibrate import quantize_model
    from folo_edu.quantization.checkpoint import save_gptq_checkpoint

    if method not in METHODS:
        raise ValueError(f"method={method!r}: expected one of {', '.join(map(repr, METHODS))}")
    if out_dir is None:
        raise ValueError("out_dir=None: expected a folder to write the checkpoint to")
    cfg = GPTQConfig(bits, group_size, desc_act, sym, damp_percent)
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name ==
                                                                             "num_samples" else 2):
            raise ValueError(f"{name}={value!r}: expected an int >= "
                             f"{1 if name == 'num_samples' else 2}")
    path = resolve_model_path(model)
    hf_config = load_hf_config(path)
    if getattr(hf_config, "quantization_config", None):
        raise ValueError(f"model={str(path)!r} is already quantized; expected a float checkpoint")
    spec = DecoderSpec(hf_config)
    q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    for in_f in sorted({spec.hidden_size, spec.intermediate_size, q_size}):
        cfg.num_groups(in_f)  # the group size must fit every layer's input features
    for dim in sorted({spec.hidden_size, spec.intermediate_size, q_size, kv_size}):
        if (dim * bits) % 32:
            raise ValueError(f"bits={bits}: a layer of this model has {dim} features, and "
                             f"{dim} values of {bits} bits do not fill whole 32-bit words "
                             "(Hugging Face's GPTQ layout); expected another bit width")
    samples = []
    if method == "gptq" and isinstance(calibration_text, list):
        samples = [torch.tensor(ids, dtype=torch.long) for ids in calibration_text]
        if not samples or any(s.dim() != 1 or len(s) < 2 for s in samples):
            raise ValueError("calibration_text: a list of samples must hold token-id lists "
                             "of at least 2 tokens each")
    elif method == "gptq":
        tokenizer = load_tokenizer(str(path))
        text = calibration_text
        if text is None:
            from folo_edu.quantization.texts import docstring_text as default_text

            text = default_text()
        samples = calibration_samples(tokenizer, text, num_samples, seq_len, seed)
    start = time.perf_counter()
    net = load_model(path, hf_config, get_backend("sdpa"), torch.float32, torch.device("cpu"))
    quantized = quantize_model(net, samples, cfg, method,
                               progress=(lambda msg: progress(f"{method} {bits}-bit: {msg}"))
                               if progress else None)
    out = save_gptq_checkpoint(net, quantized, cfg, path, out_dir)
    if progress:
        progress(f"{method} {bits}-bit g{group_size}: {time.perf_counter() - start:.1f} s -> {out}")
    return out


def calibration_samples(tokenizer, text: str, num_samples: int, seq_len: int,
                        seed: int = 0) -> list[torch.Tensor]:
    """``num_samples`` windows of ``seq_len`` tokens at random offsets of ``text``."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) < seq_len:
        raise ValueError(f"calibration_text has {len(ids)} tokens; expected at least "
                         f"seq_len={seq_len} (one sample)")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (num_samples,), generator=g).tolist()
    return [torch.tensor(ids[s:s + seq_len]) for s in starts]


def perplexity(llm, text: str, window: int = 512, max_windows: int | None = None) -> float:
    """exp(mean negative log-likelihood) of ``text`` under ``llm``, over non-overlapping
    windows of ``window`` tokens (each window's first token is context only). Computed
    from the engine's own prompt_logprobs."""
    from folo_edu.sampling_params import SamplingParams

    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window={window!r}: expected an int >= 2")
    ids = llm.get_tokenizer().encode(text, add_special_tokens=False)
    windows = [ids[i:i + window] for i in range(0, len(ids) - window + 1, window)]
    windows = windows[:max_windows] if max_windows else windows
    if not windows:
        raise ValueError(f"text has {len(ids)} tokens; expected at least window={window}")
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    outs = llm.generate([{"prompt_token_ids": w} for w in windows], params, use_tqdm=False)
    nll, count = 0.0, 0
    for w, out in zip(windows, outs):
        for pos in range(1, len(w)):
            nll -= out.prompt_logprobs[pos][w[pos]].logprob
            count += 1
    return math.exp(nll / count)
