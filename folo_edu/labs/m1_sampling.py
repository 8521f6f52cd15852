"""Checks for notebooks/00_quickstart.ipynb and 02_sampling.ipynb (milestone M1)."""
from __future__ import annotations

import torch

from folo_edu.labs import not_answered, report_pass
from folo_edu.sample import apply_top_p
from folo_edu.sampling_params import SamplingParams

# The exercise's logits: 8 tokens, deliberately not sorted. Their probabilities
# (softmax) are about [.090, .403, .020, .148, .033, .244, .007, .055].
TOP_P_LOGITS = torch.tensor([0.5, 2.0, -1.0, 1.0, -0.5, 1.5, -2.0, 0.0], dtype=torch.float64)


def check_stop_params(params) -> bool:
    """Quickstart: SamplingParams for greedy decoding of at most 20 tokens that stops at
    the first '.' and keeps that '.' in the text."""
    what = "SamplingParams: greedy, at most 20 tokens, stop at the first '.' (kept)"
    if params is None:
        return not_answered(what)
    if not isinstance(params, SamplingParams):
        raise AssertionError(f"{what}: got a {type(params).__name__}; build one with "
                             "SamplingParams(...)")
    problems = []
    if not params.greedy:
        problems.append(f"temperature={params.temperature} samples at random; greedy is "
                        "temperature=0")
    if params.max_tokens != 20:
        problems.append(f"max_tokens={params.max_tokens}; expected 20")
    if "." not in params.stop:
        problems.append(f"stop={params.stop!r} has no '.'; stop='.' ends the text at the "
                        "first full stop")
    if not params.include_stop_str_in_output:
        problems.append("the '.' is cut off the text by default; include_stop_str_in_output="
                        "True keeps it")
    if problems:
        raise AssertionError(f"{what}: " + "; ".join(problems))
    return report_pass(what)


def _as_logits(result, like: torch.Tensor, what: str) -> torch.Tensor:
    try:
        out = torch.as_tensor(result, dtype=torch.float64)
    except (TypeError, ValueError) as e:
        raise AssertionError(f"{what}: returned {type(result).__name__}; expected a tensor "
                             "of logits") from e
    if out.shape != like.shape:
        raise AssertionError(f"{what}: returned shape {tuple(out.shape)}; expected "
                             f"{tuple(like.shape)}, the same shape as the logits")
    return out


def _top_p_cases() -> list[tuple[torch.Tensor, float]]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(1000, generator=g, dtype=torch.float64) * 2
    return [(TOP_P_LOGITS, 0.5), (TOP_P_LOGITS, 0.8), (TOP_P_LOGITS, 0.3),
            (TOP_P_LOGITS, 0.95), (TOP_P_LOGITS, 1.0), (wide, 0.9), (wide, 0.5)]


def check_top_p(fn) -> bool:
    """Check a hand-written top-p: ``fn(logits [V], p) -> logits [V]`` with the tokens
    outside the nucleus set to -inf, against ``folo_edu.sample.apply_top_p``."""
    what = "top-p (nucleus) filtering"
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise AssertionError(f"{what}: {fn!r} is not a function; pass the function itself")
    for logits, p in _top_p_cases():
        case = f"{what} with p={p} on {logits.numel()} tokens"
        got = _as_logits(fn(logits.clone(), p), logits, case)
        expected = apply_top_p(logits[None], torch.tensor([p]))[0]
        kept, want = torch.isfinite(got), torch.isfinite(expected)
        if torch.equal(kept, want):
            if not torch.allclose(got[kept], logits[kept]):
                raise AssertionError(f"{case}: the right tokens are kept, but their logits "
                                     "changed; leave the kept logits as they were (the "
                                     "softmax after it renormalizes)")
            continue
        n, m = int(kept.sum()), int(want.sum())
        probs = logits.softmax(-1)
        if n == 0:
            hint = ("no token is kept; set the dropped ones to float('-inf') and keep at "
                    "least the most likely token")
        elif (got == 0).any() and not torch.isinf(got).any():
            hint = "dropped tokens must get float('-inf') (probability 0 after softmax), not 0"
        elif n == m - 1:
            hint = ("one token too few: keep the token that makes the total reach p (keep a "
                    "token while the mass of the tokens ranked above it is < p)")
        elif n == m + 1:
            hint = "one token too many: stop as soon as the kept tokens reach p"
        elif probs[kept].min() < probs[~kept].max():
            hint = ("a dropped token is more likely than a kept one; sort by probability, "
                    "largest first (descending=True)")
        else:
            hint = ("softmax the logits, sort the probabilities largest first, take the "
                    "cumulative sum, and keep the smallest prefix whose sum reaches p")
        raise AssertionError(f"{case}: kept {n} tokens, expected {m}; {hint}")
    return report_pass(f"{what} agrees with folo_edu.sample.apply_top_p on "
                       f"{len(_top_p_cases())} cases")
