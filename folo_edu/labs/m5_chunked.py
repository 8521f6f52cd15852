"""Checks for notebooks/07_chunked_prefill.ipynb (milestone M5).

The lab: the learner writes the chunk rule ``tokens_this_step(remaining, budget,
threshold, chunked) -> int``, how many of a request's remaining tokens run in this
step. ``check_tokens_this_step`` (1) tries it on edge cases against the package's
``folo_edu.engine.scheduler.tokens_this_step`` and names the likely bug, then (2) puts
it in real engines through the ``Scheduler.token_rule`` seam, on a tiny float64 Llama
with small budgets and prompts that need several chunks, and checks every step's plan
(within the budget, the same chunks as the reference, no running decode skipped) and
the greedy tokens against the reference engine and transformers.
"""
from __future__ import annotations

from folo_edu.engine.scheduler import tokens_this_step as reference_rule
from folo_edu.labs import LabCheckFailed, not_answered, report_pass

WHAT = "tokens_this_step (the chunk rule)"

# (remaining, budget, threshold, chunked). The config never sets a threshold without
# chunking, so those combinations are not asked.
EDGE_CASES: list[tuple[int, int, int, bool]] = [
    (10, 100, 0, True),    # the whole prompt fits
    (100, 10, 0, True),    # a chunk: what is left of the budget
    (100, 10, 0, False),   # no chunking: it waits
    (10, 10, 0, True),     # exactly the budget
    (10, 10, 0, False),
    (11, 10, 0, True),     # one token too many
    (11, 10, 0, False),
    (1, 5, 0, True),       # a decode
    (1, 1, 0, False),
    (1, 1, 0, True),
    (5, 0, 0, True),       # no budget left
    (5, 0, 0, False),
    (100, 50, 16, True),   # the threshold caps a long prompt
    (16, 100, 16, True),
    (17, 100, 16, True),
    (10, 50, 16, True),    # a prompt shorter than the threshold
    (1, 50, 16, True),
    (100, 8, 16, True),    # the budget is smaller than the threshold
    (2048, 2048, 0, False),
    (1500, 56, 0, True),
]


# ---- (1) edge cases ------------------------------------------------------------------
def _ignores_threshold(remaining, budget, threshold, chunked):
    return reference_rule(remaining, budget, 0, chunked)


def _returns_budget(remaining, budget, threshold, chunked):
    n = min(remaining, threshold) if threshold > 0 else remaining
    if chunked:
        return budget
    return n if n <= budget else 0


def _always_chunks(remaining, budget, threshold, chunked):
    return reference_rule(remaining, budget, threshold, True)


def _never_chunks(remaining, budget, threshold, chunked):
    n = min(remaining, threshold) if threshold > 0 else remaining
    return n if n <= budget else 0


def _strict_fit(remaining, budget, threshold, chunked):
    n = min(remaining, threshold) if threshold > 0 else remaining
    if n < budget:
        return n
    return budget if chunked else 0


def _budget_minus_one(remaining, budget, threshold, chunked):
    n = min(remaining, threshold) if threshold > 0 else remaining
    if n <= budget:
        return n
    return budget - 1 if chunked else 0


def _threshold_zero_caps(remaining, budget, threshold, chunked):
    n = min(remaining, threshold)
    if n <= budget:
        return n
    return budget if chunked else 0


# Wrong rules the check recognises, each with the hint that names the bug.
WRONG_RULES = [
    (_ignores_threshold, "the threshold is ignored: with long_prefill_token_threshold > 0 "
                         "a request takes at most that many tokens in one step"),
    (_returns_budget, "it returns the budget even when the request needs fewer tokens; a "
                      "request never gets more than it has remaining"),
    (_always_chunks, "it chunks when chunked is False; without chunked prefill it is all "
                     "or nothing: every remaining token, or 0 (the request waits)"),
    (_never_chunks, "it returns 0 when the budget left is smaller than what the request "
                    "needs, even with chunking on; with chunked prefill the request takes "
                    "what fits (the rest of the budget)"),
    (_strict_fit, "off by one: a request needing exactly the budget left fits (<=, "
                  "not <)"),
    (_budget_minus_one, "off by one: a chunk takes the whole budget left, not one less"),
    (_threshold_zero_caps, "threshold 0 means no cap, not a cap of 0 tokens"),
]


def _call(fn, case):
    remaining, budget, threshold, chunked = case
    try:
        n = fn(remaining, budget, threshold, chunked)
    except Exception as e:  # noqa: BLE001  (the learner's code: report it briefly)
        raise LabCheckFailed(f"{WHAT}: tokens_this_step{case} raised {type(e).__name__}: "
                             f"{e}") from None
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int):
        raise LabCheckFailed(f"{WHAT}: tokens_this_step{case} returned {n!r}; expected an "
                             "int (a number of tokens; int(...) a float)")
    return n


def _diagnose(fn, got: dict) -> str:
    """A hint for a rule that failed some edge case: a named bug, else the first case."""
    for wrong, text in WRONG_RULES:
        if all(got[c] == wrong(*c) for c in EDGE_CASES):
            return text
    case = next(c for c in EDGE_CASES if got[c] != reference_rule(*c))
    remaining, budget, threshold, chunked = case
    n, want = got[case], reference_rule(*case)
    where = (f"remaining={remaining}, budget={budget}, threshold={threshold}, "
             f"chunked={chunked}: got {n}")
    if n < 0:
        return f"{where}; a number of tokens is never negative"
    if n > budget:
        return f"{where}, more than the budget left; never more than budget"
    if n > remaining:
        return f"{where}, more than the request has remaining"
    if threshold and n > threshold:
        return f"{where}, more than the threshold (the cap per request per step)"
    if chunked and n == 0:
        return (f"{where}; with chunking a request with tokens left and budget left always "
                "gets at least one token")
    if not chunked and 0 < n < remaining:
        return f"{where}; without chunking it is all or nothing"
    if abs(n - want) == 1:
        return f"{where}, expected {want}: off by one"
    return f"{where}, expected {want}"


# ---- (2) the real engine -----------------------------------------------------------
# (arrival step, prompt length, output tokens): short requests decoding while longer
# prompts arrive, so prefills are chunked beside running decodes.
ENGINE_WORKLOAD = [(0, 3, 14), (0, 9, 12), (1, 61, 5), (2, 37, 6), (4, 1, 8), (5, 50, 4)]
# (enable_chunked_prefill, max_num_batched_tokens, long_prefill_token_threshold)
ENGINE_SETTINGS = [(True, 8, 0), (True, 13, 5), (False, 128, 0)]
MAX_MODEL_LEN = 128


def _prompts() -> list[list[int]]:
    import random

    rng = random.Random(7)
    return [[rng.randrange(3, 256) for _ in range(p)] for _, p, _ in ENGINE_WORKLOAD]


class _Guarded:
    """The learner's rule with every call checked as the scheduler makes it, so a wrong
    value is reported at the call that made it, not as a crash later in the engine."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, remaining, budget, threshold, chunked):
        self.calls += 1
        case = (remaining, budget, threshold, chunked)
        n = _call(self.fn, case)
        if n is None or not 0 <= n <= min(remaining, budget):
            raise LabCheckFailed(f"{WHAT}: inside the engine, tokens_this_step{case} returned "
                                 f"{n!r}; expected an int in [0, min(remaining, budget)]")
        return n


def _engine_run(model_dir, rule, chunked: bool, budget: int, threshold: int) -> dict:
    """One run of ENGINE_WORKLOAD with ``rule`` as the scheduler's token_rule: the steps
    (who ran, how many tokens, prefill or decode) and every request's tokens."""
    from folo_edu.engine.llm_engine import LLMEngine
    from folo_edu.sampling_params import SamplingParams

    engine = LLMEngine.from_kwargs(str(model_dir), dtype="float64", skip_tokenizer_init=True,
                                   max_model_len=MAX_MODEL_LEN, num_kv_blocks=64, max_num_seqs=6,
                                   enable_prefix_caching=False,
                                   enable_chunked_prefill=chunked,
                                   max_num_batched_tokens=budget,
                                   long_prefill_token_threshold=threshold)
    engine.scheduler.token_rule = rule  # the seam
    pending = [(a, f"r{i}", p, n) for i, ((a, _, n), p) in enumerate(zip(ENGINE_WORKLOAD,
                                                                        _prompts()))]
    steps, tokens, finish, step = [], {}, {}, 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= step:
            _, rid, prompt, n = pending.pop(0)
            engine.add_request(rid, {"prompt_token_ids": prompt},
                               SamplingParams(temperature=0, max_tokens=n, ignore_eos=True))
        if engine.has_unfinished_requests():
            outs = engine.step()
            steps.append(list(engine.last_step))
            if not engine.last_step:
                raise LabCheckFailed(f"{WHAT}: inside the engine (budget {budget}, threshold "
                                     f"{threshold}, chunked={chunked}) a step scheduled "
                                     "nothing while requests were waiting: the rule returned "
                                     "0 for all of them, so the engine would never finish")
            for out in outs:
                if out.finished:
                    tokens[out.request_id] = list(out.outputs[0].token_ids)
                    finish[out.request_id] = step
        else:
            steps.append([])
        step += 1
        if step > 1000:
            raise LabCheckFailed(f"{WHAT}: the engine did not finish in 1000 steps")
    return {"steps": steps, "finish": finish,
            "tokens": [tokens[f"r{i}"] for i in range(len(ENGINE_WORKLOAD))]}


def _skipped_decode(steps, finish: dict) -> int | None:
    """The first step in which a request that decoded in the step before, and did not
    finish there, got no token; None if there is none."""
    for s in range(1, len(steps)):
        ran = {r for r, _, _ in steps[s]}
        for rid, _, kind in steps[s - 1]:
            if kind == "decode" and finish[rid] > s - 1 and rid not in ran:
                return s
    return None


def check_tokens_this_step(fn) -> bool:
    """Check ``fn(remaining, budget, threshold, chunked) -> int``: edge cases against the
    package's rule, then real engine runs with ``fn`` as ``Scheduler.token_rule``."""
    if fn is None:
        return not_answered(WHAT)
    if not callable(fn):
        raise LabCheckFailed(f"{WHAT}: {fn!r} is not a function; pass the function itself")
    got = {c: _call(fn, c) for c in EDGE_CASES}
    if all(v is None for v in got.values()):  # the stub: `...  # your code here`
        return not_answered(WHAT)
    missing = [c for c in EDGE_CASES if got[c] is None]
    if missing:
        raise LabCheckFailed(f"{WHAT}: tokens_this_step{missing[0]} returned None; every "
                             "path must return an int")
    if any(got[c] != reference_rule(*c) for c in EDGE_CASES):
        raise LabCheckFailed(f"{WHAT}: {_diagnose(fn, got)}")

    from folo_edu.labs.m1_forward import _transformers_greedy
    from folo_edu.labs.m1_sampling import tiny_lab_model

    model_dir = tiny_lab_model()
    num_steps = num_calls = 0
    yours = None
    for chunked, budget, threshold in ENGINE_SETTINGS:
        guarded = _Guarded(fn)
        mine = _engine_run(model_dir, guarded, chunked, budget, threshold)
        ref = _engine_run(model_dir, reference_rule, chunked, budget, threshold)
        where = f"inside the engine (budget {budget}, threshold {threshold}, chunked={chunked})"
        over = [s for s, step in enumerate(mine["steps"]) if sum(n for _, n, _ in step) > budget]
        if over:
            raise LabCheckFailed(f"{WHAT}: {where}, step {over[0]} ran more tokens than the "
                                 "budget")
        skipped = _skipped_decode(mine["steps"], mine["finish"])
        if skipped is not None:
            raise LabCheckFailed(f"{WHAT}: {where}, a running decode got no token in step "
                                 f"{skipped}")
        if [set(s) for s in mine["steps"]] != [set(s) for s in ref["steps"]]:
            s = next(k for k, (a, b) in enumerate(zip(mine["steps"], ref["steps"]))
                     if set(a) != set(b))
            raise LabCheckFailed(f"{WHAT}: {where}, step {s} planned {sorted(mine['steps'][s])}"
                                 f"; the reference planned {sorted(ref['steps'][s])}")
        if mine["tokens"] != ref["tokens"]:
            raise LabCheckFailed(f"{WHAT}: {where}, the same plan gave different tokens; run "
                                 "the cell again, and if it persists report it")
        num_steps += len(mine["steps"])
        num_calls += guarded.calls
        yours = mine["tokens"] if yours is None else yours
        if mine["tokens"] != yours:
            raise LabCheckFailed(f"{WHAT}: {where}, the tokens differ from the first setting's")
    outputs = max(n for _, _, n in ENGINE_WORKLOAD)
    hf = _transformers_greedy(model_dir, _prompts(), outputs)
    if any(t != h[:len(t)] for t, h in zip(yours, hf)):
        raise LabCheckFailed(f"{WHAT}: the engine's greedy tokens differ from transformers'; "
                             "run the cell again, and if it persists report it")
    return report_pass(
        f"{WHAT} agrees with the reference on {len(EDGE_CASES)} edge cases; inside "
        f"{len(ENGINE_SETTINGS)} engines (budgets {', '.join(str(b) for _, b, _ in ENGINE_SETTINGS)}"
        f", chunked and not) it was called {num_calls} times, every one of {num_steps} steps "
        "stayed within the budget, planned the same chunks as the reference and skipped no "
        f"running decode, and the {sum(map(len, yours))} greedy tokens equal the reference "
        "engine's and transformers'")
