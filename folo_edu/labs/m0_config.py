"""Checks for notebooks/01_config_and_requests.ipynb (milestone M0)."""
from __future__ import annotations

from folo_edu.labs import LabCheckFailed, hint, not_answered, report_pass, require_number


def check_kv_bytes_per_token(answer, num_layers: int = 32, num_kv_heads: int = 8,
                             head_dim: int = 128, bytes_per_elem: int = 2,
                             num_heads: int = 32) -> bool:
    """Check the KV-cache bytes one token takes.

    Defaults: Llama-3-8B in bf16 (meta-llama/Meta-Llama-3-8B config.json: 32 layers,
    32 query heads, 8 KV heads, head_dim 128).
    """
    what = (f"KV bytes per token ({num_layers} layers, {num_kv_heads} KV heads, "
            f"head_dim {head_dim}, {bytes_per_elem} bytes each)")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    one_tensor = num_layers * num_kv_heads * head_dim * bytes_per_elem
    expected = 2 * one_tensor
    if answer == expected:
        return report_pass(f"{what} = {expected:,} bytes ({expected / 1024:g} KiB)")
    hints = [
        (one_tensor, "K only (or V only)? the cache keeps both"),
        (expected // bytes_per_elem, "elements, not bytes? multiply by the bytes per element"),
        (expected // num_layers, "one layer? every layer has its own K and V"),
        (expected * num_heads // num_kv_heads, "all query heads? with GQA only the KV heads "
                                               "are cached"),
    ]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "multiply K and V (2) x layers x KV heads x head_dim x bytes per element"))


def check_crossover_context(answer, num_params: float = 8.03e9, bytes_per_param: int = 2,
                            num_layers: int = 32, num_kv_heads: int = 8, head_dim: int = 128,
                            bytes_per_elem: int = 2, num_seqs: int = 1) -> bool:
    """Check the context length at which the KV cache outgrows the weights.

    Defaults: Llama-3-8B in bf16, one sequence. Any answer within 1% passes.
    """
    what = f"the context where KV bytes reach the weight bytes ({num_seqs} sequence(s))"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    per_token = 2 * num_layers * num_kv_heads * head_dim * bytes_per_elem * num_seqs
    expected = num_params * bytes_per_param / per_token
    if abs(answer - expected) <= 0.01 * expected:
        return report_pass(f"{what} is about {expected:,.0f} tokens")
    why = ("divide the weight bytes (params x bytes per param) by the KV bytes per token "
           "of all sequences together")
    if abs(answer - expected * num_seqs) <= 0.01 * expected * num_seqs:
        why = "that is for one sequence: the sequences share the weights but not the KV cache."
    raise LabCheckFailed(f"{what}: {answer!r} is not right; {why}")
