"""Checks for notebooks/00_quickstart.ipynb and 02_sampling.ipynb (milestone M1).

The notebook 02 lab: the learner writes ``top_p_filter(logits [B, V], top_p [B])``, and
``check_top_p_filter`` runs it (1) on edge cases against ``apply_top_p`` and (2) inside a
real engine, through the Sampler's ``top_p_fn`` seam: seeded sampling with the learner's
filter must give the same tokens as with the package's.
"""
from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from pathlib import Path

import torch

from folo_edu.labs import LabCheckFailed, not_answered, report_pass
from folo_edu.sample import Sampler, apply_top_p
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
        raise LabCheckFailed(f"{what}: got a {type(params).__name__}; build one with "
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
        raise LabCheckFailed(f"{what}: " + "; ".join(problems))
    return report_pass(what)



# ---- notebook 02 lab: top_p_filter --------------------------------------------------
WHAT_TOP_P = "top_p_filter (nucleus filtering of a batch of logits)"


def _top_p_filter_cases() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, logits [B, V], top_p [B]) edge cases, float64."""
    f64 = torch.float64
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(3, 1000, generator=g, dtype=f64) * 2
    peaked = torch.zeros(2, 16, dtype=f64)
    peaked[:, 5] = 40.0                                    # token 5 holds ~all the mass
    ties = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0, 1.0]], dtype=f64)
    return [
        ("one row, p=0.8", TOP_P_LOGITS[None], torch.tensor([0.8], dtype=f64)),
        ("rows with different top_p", TOP_P_LOGITS.expand(4, -1).clone(),
         torch.tensor([0.5, 0.8, 0.3, 0.95], dtype=f64)),
        ("a row with top_p=1 (keeps everything) beside p=0.6",
         TOP_P_LOGITS.expand(2, -1).clone(), torch.tensor([1.0, 0.6], dtype=f64)),
        ("one token holds all the mass", peaked, torch.tensor([0.9, 0.999], dtype=f64)),
        ("tiny top_p keeps only the top token", TOP_P_LOGITS[None],
         torch.tensor([0.01], dtype=f64)),
        ("ties: four tokens share the top probability", ties,
         torch.tensor([0.5], dtype=f64)),
        ("1000 tokens, 3 rows", wide, torch.tensor([0.9, 0.5, 0.99], dtype=f64)),
    ]


def _sorted_keep(logits, top_p, descending=True, probs=True, inclusive=False):
    """A sort-based top-p with switchable bugs; returns the kept mask, in sorted order
    and in vocabulary order."""
    x = logits.softmax(-1) if probs else logits
    values, order = x.sort(dim=-1, descending=descending)
    mass = values.cumsum(-1) - (0 if inclusive else values)
    keep_sorted = mass < top_p[:, None]
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return keep_sorted, keep


def _wrong_top_p_masks(logits, top_p) -> list[tuple[torch.Tensor, str]]:
    """The kept masks of common wrong implementations, each with the hint that names it."""
    _, ascending = _sorted_keep(logits, top_p, descending=False)
    _, crossing = _sorted_keep(logits, top_p, inclusive=True)
    unsorted, _ = _sorted_keep(logits, top_p)
    _, no_softmax = _sorted_keep(logits, top_p, probs=False)
    _, ties_by_order = _sorted_keep(logits, top_p)
    first_p = apply_top_p(logits, top_p[:1].expand(len(top_p))).isfinite()
    return [
        (ascending, "sort largest first: torch.sort(probs, descending=True) (ascending "
                    "order keeps the least likely tokens)"),
        (crossing, "one token too few: keep the token that makes the total reach top_p "
                   "(keep a token while the mass of the tokens ranked ABOVE it is < top_p, "
                   "i.e. cumsum - probs, not cumsum)"),
        (unsorted, "the kept tokens are the first ones of the vocabulary: your mask is in "
                   "sorted order; scatter it back to the token ids (mask.scatter(1, order, "
                   "keep_sorted), or index with the sort's indices)"),
        (no_softmax, "the cumulative sum must run over probabilities (softmax of the "
                     "logits), not over the logits themselves"),
        (first_p, "every row used the first row's top_p; row i must use top_p[i] "
                  "(top_p[:, None] broadcasts one value per row)"),
        (ties_by_order, "tokens TIED with the last kept one must be kept too (as "
                        "apply_top_p does), else which of them survive depends on the "
                        "sort; keep every token whose probability is >= the last kept "
                        "token's probability"),
    ]


def _diagnose_top_p(got_logits, logits, top_p, case) -> str | None:
    """None if ``got_logits`` is right for this case, else a short hint."""
    expected = apply_top_p(logits, top_p)
    kept, want = torch.isfinite(got_logits), torch.isfinite(expected)
    if torch.equal(kept, want):
        if not torch.allclose(got_logits[kept], logits[kept]):
            return (f"{case}: the right tokens are kept, but their logits changed; return "
                    "LOGITS, unchanged where kept (not probabilities: the sampler's "
                    "softmax comes after the filter)")
        return None
    if not torch.isinf(got_logits).any() and torch.all(got_logits[~want] == 0):
        if torch.allclose(got_logits[want], logits[want]):
            return f"{case}: dropped tokens must get float('-inf') (probability 0), not 0"
        return (f"{case}: return LOGITS with the dropped tokens at float('-inf'), not "
                "probabilities (the sampler's softmax comes after the filter)")
    if not kept.any(dim=-1).all():
        return (f"{case}: a row keeps no token at all; the most likely token is always "
                "kept")
    for mask, text in _wrong_top_p_masks(logits, top_p):
        if torch.equal(kept, mask):
            return f"{case}: {text}"
    n, m = kept.sum(-1).tolist(), want.sum(-1).tolist()
    if all(a == b + 1 for a, b in zip(n, m) if a != b):
        return (f"{case}: one token too many in some row (kept {n}, expected {m} per row); "
                "stop as soon as the kept tokens reach top_p")
    return (f"{case}: kept {n} tokens per row, expected {m}; softmax, sort largest first, "
            "cumulative sum, keep a token while the mass above it is < top_p, and "
            "scatter the decision back to the token ids")


def _call_top_p(fn, logits, top_p, case) -> torch.Tensor:
    before = logits.clone()
    out = fn(logits, top_p)
    if not isinstance(out, torch.Tensor):
        raise LabCheckFailed(f"{case}: returned {type(out).__name__}; expected a tensor of "
                             f"logits shaped like the input, {tuple(logits.shape)}")
    if out.shape != logits.shape:
        raise LabCheckFailed(f"{case}: returned shape {tuple(out.shape)}; expected "
                             f"{tuple(logits.shape)}, the same shape as the logits")
    if not torch.equal(logits, before):
        raise LabCheckFailed(f"{case}: your function changed its input in place; the "
                             "sampler still needs the raw logits (for logprobs), so return "
                             "a new tensor (masked_fill, or clone first)")
    return out.to(torch.float64)


def tiny_lab_model() -> Path:
    """A tiny random float64 Llama (4 query heads, 2 KV heads, vocab 256) in a temporary
    folder, built once per process and deleted at exit."""
    return _tiny_lab_model()


@functools.lru_cache(maxsize=1)
def _tiny_lab_model() -> Path:
    import atexit

    from folo_edu.models.tiny import make_tiny_model

    folder = Path(tempfile.mkdtemp(prefix="folo_edu_lab_"))
    atexit.register(shutil.rmtree, folder, True)
    with _quiet_hf():
        return make_tiny_model(folder / "tiny-llama", "llama-gqa2-tied", dtype=torch.float64)


@contextlib.contextmanager
def _quiet_hf():
    from transformers.utils import logging as hf_logging

    on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def top_p_in_engine(llm, fn):
    """Run ``llm`` with ``fn`` as its top-p filter: the engine's model runner gets a
    ``Sampler(top_p_fn=fn)`` (the seam), and its own sampler back afterwards."""
    runner = llm.llm_engine.model_runner
    saved, runner.sampler = runner.sampler, Sampler(top_p_fn=fn)
    try:
        yield llm
    finally:
        runner.sampler = saved


def _engine_tokens(llm, fn) -> list[list[int]]:
    from folo_edu.sampling_params import SamplingParams

    prompts = [{"prompt_token_ids": ids} for ids in ([5], [9, 80, 3], [17, 4, 200, 51, 6],
                                                      [100] * 7)]
    params = [SamplingParams(temperature=t, top_p=p, seed=s, max_tokens=12, ignore_eos=True)
              for t, p, s in [(1.0, 0.5, 1), (0.7, 0.9, 2), (1.3, 0.3, 3), (1.0, 0.8, 4)]]
    with top_p_in_engine(llm, fn):
        outs = llm.generate(prompts, params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def check_top_p_filter(fn) -> bool:
    """Check ``fn(logits [B, V], top_p [B]) -> logits [B, V]`` (the dropped tokens at
    -inf, the kept ones unchanged): edge cases against ``apply_top_p``, then a seeded
    engine run on a tiny float64 Llama with ``fn`` as the Sampler's top-p filter, whose
    tokens must equal the run with ``apply_top_p``."""
    what = WHAT_TOP_P
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    cases = _top_p_filter_cases()
    _, logits, top_p = cases[0]
    if fn(logits.clone(), top_p.clone()) is None:  # the stub: `...  # your code here`
        return not_answered(what)
    for name, logits, top_p in cases:
        case = f"{what}, case '{name}'"
        problem = _diagnose_top_p(_call_top_p(fn, logits.clone(), top_p.clone(), case),
                                  logits, top_p, case)
        if problem:
            raise LabCheckFailed(problem)

    from folo_edu import LLM

    llm = LLM(str(tiny_lab_model()), dtype="float64", skip_tokenizer_init=True,
              max_model_len=64, num_kv_blocks=16, seed=0)
    reference, yours = _engine_tokens(llm, apply_top_p), _engine_tokens(llm, fn)
    for i, (a, b) in enumerate(zip(reference, yours)):
        if a != b:
            step = next(j for j, (x, y) in enumerate(zip(a, b)) if x != y)
            raise LabCheckFailed(
                f"{what}: inside the engine, request {i} sampled a different token at step "
                f"{step} than with apply_top_p (same seed); the edge cases passed, so look "
                "at what differs in the engine: float64 logits, rows of several requests, "
                "top_p given as a tensor on the logits' device")
    return report_pass(f"{what} agrees with apply_top_p on {len(cases)} edge cases, and the "
                       f"engine with your filter inside sampled the same "
                       f"{sum(map(len, yours))} tokens as with the package's")


def time_top_p(fns: dict, logits: torch.Tensor, top_p: float = 0.9,
               repeats: int = 7) -> dict[str, float]:
    """Median seconds of each ``fn(logits [B, V], top_p [B])`` (one warm-up first)."""
    p = torch.full((logits.shape[0],), top_p, dtype=logits.dtype)
    result = {}
    for name, fn in fns.items():
        fn(logits, p)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(logits, p)
            times.append(time.perf_counter() - start)
        result[name] = sorted(times)[len(times) // 2]
    return result
