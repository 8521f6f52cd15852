"""Checks for notebooks/04_continuous_batching.ipynb (milestone M2).

The exercise: for given output lengths and a batch size, how many engine steps
(forward passes) does static batching need, and how many does continuous batching
need? The references are folo_edu.viz.batching.static_batching_steps and
continuous_batching_steps, the second of which is checked against the real
scheduler in tests/unit/test_04_labs_and_viz.py.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections import deque

from folo_edu.labs import LabCheckFailed, hint, not_answered, report_pass, require_number
from folo_edu.engine.scheduler import Scheduler, tokens_this_step
from folo_edu.engine.scheduler_output import SchedulerOutput
from folo_edu.request import RequestStatus
from folo_edu.viz.batching import continuous_batching_steps, static_batching_steps

# The exercise's requests: output lengths of r0..r5, served with 3 seats.
EXERCISE_OUTPUT_LENS = (6, 2, 3, 7, 1, 4)
EXERCISE_BATCH_SIZE = 3


def _common_hints(answer, output_lens, batch_size) -> list[tuple[int, str]]:
    total = sum(output_lens)
    return [
        (total, "that is one request at a time: with several seats, requests share a step"),
        (math.ceil(total / batch_size), "that is perfect packing, every seat busy in every "
                                        "step; a request's tokens come one per step, so they "
                                        "cannot be spread over several seats"),
        (max(output_lens), "that is one batch holding every request; there are only "
                           f"{batch_size} seats"),
    ]


def check_static_steps(answer, output_lens=EXERCISE_OUTPUT_LENS,
                       batch_size: int = EXERCISE_BATCH_SIZE) -> bool:
    """Check the number of steps static batching needs: consecutive batches of
    ``batch_size``, each running until its longest member is done."""
    output_lens = list(output_lens)
    what = f"steps of static batching (batches of {batch_size}, outputs {output_lens})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = static_batching_steps(output_lens, batch_size)
    if answer == expected:
        return report_pass(f"{what} = {expected}")
    batches = [output_lens[s:s + batch_size] for s in range(0, len(output_lens), batch_size)]
    hints = _common_hints(answer, output_lens, batch_size) + [
        (expected + len(batches), "one step per batch too many: the prefill step already "
                                  "yields each request's first token"),
    ]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "add up, batch by batch, the longest output in each batch"))


def check_continuous_steps(answer, output_lens=EXERCISE_OUTPUT_LENS,
                           max_num_seqs: int = EXERCISE_BATCH_SIZE) -> bool:
    """Check the number of steps continuous batching needs when every request is there
    at step 0, with ``max_num_seqs`` seats and a token budget that never binds."""
    output_lens = list(output_lens)
    what = (f"steps of continuous batching (max_num_seqs={max_num_seqs}, "
            f"outputs {output_lens})")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = continuous_batching_steps(output_lens, max_num_seqs)
    if answer == expected:
        lower = math.ceil(sum(output_lens) / max_num_seqs)
        return report_pass(f"{what} = {expected} (static batching: "
                           f"{static_batching_steps(output_lens, max_num_seqs)}; no schedule "
                           f"can do better than {lower})")
    hints = [(static_batching_steps(output_lens, max_num_seqs),
              "that is static batching: here a finished request's seat is given to the "
              "next waiting request at the very next step")]
    hints += _common_hints(answer, output_lens, max_num_seqs)
    hints += [(expected + len(output_lens), "a newcomer's prefill is not a step of its own: it "
                                            "runs in the same step as the others' decodes, "
                                            "and yields its first token")]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints,
        "play it step by step: each step every running request gains one token; one that "
        "reaches its length leaves, and the first waiting request takes its seat next step"))


# ---- notebook 04 lab: plan_step, one step of the token-budget schedule ----------------
WHAT_PLAN = "plan_step (one step of the token-budget schedule)"


def reference_plan(running, waiting, budget: int, max_num_seqs: int, chunked: bool):
    """The rule of ``Scheduler.schedule()`` on plain data (no prefix cache, no preemption,
    long_prefill_token_threshold 0): running requests first, decodes (1 token left)
    before unfinished prefills, then waiting ones first come first served while budget
    and seats remain; a prompt that does not fit the budget left takes what fits
    (chunked) or waits (not chunked), and nobody behind it jumps the queue."""
    plan = []
    for rid, left in sorted(running, key=lambda r: r[1] > 1):  # stable: decodes first
        if budget == 0:
            break
        n = tokens_this_step(left, budget, 0, chunked)
        if n:
            plan.append((rid, n))
            budget -= n
    seats = max_num_seqs - len(running)
    for rid, left in waiting:
        if budget == 0 or seats == 0:
            break
        n = tokens_this_step(left, budget, 0, chunked)
        if n == 0:
            break
        plan.append((rid, n))
        budget -= n
        seats -= 1
    return plan


# (name, running, waiting, budget, max_num_seqs, chunked)
PLAN_CASES = [
    ("two decodes, two short prompts waiting", [("a", 1), ("b", 1)], [("c", 5), ("d", 3)],
     16, 4, True),
    ("nothing running yet", [], [("a", 6), ("b", 4), ("c", 9)], 32, 2, True),
    ("the budget binds, chunked prefill", [("a", 1)], [("b", 10), ("c", 4)], 8, 4, True),
    ("the budget binds, no chunking (all or nothing)", [("a", 1)], [("b", 10), ("c", 4)], 8, 4,
     False),
    ("every seat taken but one", [("a", 1), ("b", 1), ("c", 1)], [("d", 2), ("e", 2)], 64, 4,
     True),
    ("a running chunked prefill admitted before two decodes",
     [("p", 30), ("a", 1), ("b", 1)], [("w", 4)], 16, 8, True),
    ("no seat free", [("a", 1), ("b", 1)], [("c", 3)], 64, 2, True),
    ("a budget smaller than the decodes", [("a", 1), ("b", 1), ("c", 1)], [("d", 2)], 2, 8,
     True),
    ("nothing to do", [], [], 16, 4, True),
]


def _as_plan(got, where) -> list[tuple[str, int]]:
    if got is None or isinstance(got, (str, bytes)):
        raise LabCheckFailed(f"{WHAT_PLAN} {where}: returned {got!r}; return a list of "
                             "(request_id, num_tokens) pairs")
    try:
        plan = [(rid, n) for rid, n in got]
    except (TypeError, ValueError):
        raise LabCheckFailed(f"{WHAT_PLAN} {where}: returned {got!r}; return a list of "
                             "(request_id, num_tokens) pairs") from None
    return plan


def _diagnose_plan(plan, running, waiting, budget, max_num_seqs, chunked) -> str | None:
    """None if ``plan`` is the rule's plan, else a hint naming the likely bug."""
    expected = dict(reference_plan(running, waiting, budget, max_num_seqs, chunked))
    left = dict(running) | dict(waiting)
    ids = [rid for rid, _ in plan]
    unknown = [rid for rid in ids if rid not in left]
    if unknown:
        return f"{unknown[0]!r} is neither running nor waiting"
    if len(set(ids)) != len(ids):
        return "a request appears twice in the plan; give each at most one entry"
    got = dict(plan)
    bad = [(rid, n) for rid, n in plan if isinstance(n, bool) or not isinstance(n, int)
           or n < 1 or n > left[rid]]
    if bad:
        rid, n = bad[0]
        return (f"{rid!r} gets {n!r} tokens; a planned request gets an int from 1 to the "
                f"tokens it has left ({left[rid]}); leave out a request that gets none")
    if got == expected:
        return None
    if sum(got.values()) > budget:
        return (f"{sum(got.values())} tokens planned, but the budget is {budget}: subtract "
                "what each request takes and stop when nothing is left")
    run_ids = [rid for rid, _ in running]
    wait_ids = [rid for rid, _ in waiting]
    new = [rid for rid in got if rid in wait_ids]
    if len(running) + len(new) > max_num_seqs:
        return (f"{len(running)} running + {len(new)} admitted > max_num_seqs={max_num_seqs}: "
                "the running requests keep their seats; admit only into the free ones")
    skipped = [rid for rid in run_ids if rid not in got and rid in expected]
    decodes = [rid for rid in skipped if dict(running)[rid] == 1]
    if decodes:
        prefills = [rid for rid in got if rid in run_ids and dict(running)[rid] > 1]
        if prefills:
            return (f"running decode {decodes[0]!r} got no token while the unfinished prefill "
                    f"{prefills[0]!r} took the budget: decodes first (1 token each), then "
                    "unfinished prefills")
        return (f"running decode {decodes[0]!r} got no token: running requests first; "
                "every one is served before any waiting one")
    if skipped or any(got.get(rid, 0) < expected.get(rid, 0) for rid in run_ids):
        return ("a running request got fewer tokens than the budget allows while a waiting "
                "one was admitted: running requests first, then waiting ones")
    for i, rid in enumerate(wait_ids):
        if rid in got and any(w not in got for w in wait_ids[:i]):
            earlier = next(w for w in wait_ids[:i] if w not in got)
            return (f"{rid!r} was admitted while {earlier!r}, ahead of it in the queue, was "
                    "not: first come first served; when the first waiting request cannot "
                    "run, nobody behind it does")
    partial = [rid for rid in got if got[rid] < left[rid]]
    if partial and not chunked:
        return (f"{partial[0]!r} got {got[partial[0]]} of its {left[partial[0]]} tokens, but "
                "chunked=False: a prompt runs whole or waits (all or nothing)")
    missing = [rid for rid in expected if rid not in got]
    if missing and chunked:
        return (f"{missing[0]!r} got nothing though {budget - sum(got.values())} tokens of "
                "budget and a seat were left: with chunked=True a prompt that does not fit "
                "takes what is left of the budget (a chunk)")
    if missing:
        return (f"{missing[0]!r} fits the budget and a seat is free, but got nothing: admit "
                "waiting requests while budget and seats remain")
    return ("the plan differs from the rule: running requests first (decodes, then "
            "unfinished prefills), each taking min(tokens left, budget left); then waiting "
            "requests in order while a seat and budget remain")


class PlanLabScheduler(Scheduler):
    """The engine's scheduler, except that ``schedule()`` asks the learner's
    ``plan_step(running, waiting, budget, max_num_seqs, chunked)`` which requests run and
    how many tokens each, on plain data (request id, tokens it has left), running requests
    in the order they were admitted and waiting ones in queue order. The scheduler then
    carries the plan out as the package's does: KV blocks through the real KVCacheManager
    (preempting the most recently admitted request when blocks run out), admission, and the
    SchedulerOutput through ``_plan`` and ``_check_invariants``. With ``lab_check`` every
    plan is compared with the rule first. (The prefix cache and
    long_prefill_token_threshold are left out of the lab.)"""

    def schedule(self) -> SchedulerOutput:
        budget = self.config.max_num_batched_tokens
        seats, chunked = self.config.max_num_seqs, self.config.enable_chunked_prefill
        running = [(r.request_id, r.num_tokens - r.num_computed_tokens) for r in self.running]
        waiting = [(r.request_id, r.num_tokens - r.num_computed_tokens) for r in self.waiting]
        where = (f"(engine step {self.lab_steps}: running {running}, waiting {waiting}, "
                 f"budget {budget}, max_num_seqs {seats}, chunked {chunked})")
        try:
            got = self.lab_plan(list(running), list(waiting), budget, seats, chunked)
        except LabCheckFailed:
            raise
        except Exception as e:
            raise LabCheckFailed(f"{WHAT_PLAN} {where}: raised {type(e).__name__}: {e}") from None
        plan = _as_plan(got, where)
        problem = _diagnose_plan(plan, running, waiting, budget, seats, chunked)
        if problem and (self.lab_check or "budget is" in problem or "max_num_seqs" in problem
                        or "neither" in problem or "twice" in problem or "gets" in problem):
            raise LabCheckFailed(f"{WHAT_PLAN} {where}: {problem}")
        self.lab_steps += 1

        scheduled, preempted = {}, []
        running_ids = {rid for rid, _ in running}
        for rid, n in plan:
            req = self.requests[rid]
            if rid in running_ids:
                if req.status != RequestStatus.RUNNING:  # preempted earlier in this loop
                    continue
                while not self.kv.allocate_slots(req, n):
                    victim = self.running.pop()  # the most recently admitted
                    scheduled.pop(victim.request_id, None)
                    self._preempt(victim)
                    preempted.append(victim.request_id)
                    if victim is req:
                        break
                else:
                    scheduled[rid] = (req, n)
                continue
            # a waiting request joins only if nobody had to be preempted this step
            if preempted or len(self.running) >= seats or not self.kv.allocate_slots(req, n):
                break
            self.waiting.remove(req)
            req.transition(RequestStatus.RUNNING)
            if req.first_scheduled_time is None:
                req.first_scheduled_time = time.monotonic()
            self.running.append(req)
            scheduled[rid] = (req, n)

        order = sorted(scheduled.values(),  # the batch order of the package's scheduler
                       key=lambda rn: (rn[1] != 1, rn[0].num_tokens if rn[1] == 1 else 0))
        out = SchedulerOutput([self._plan(r, n) for r, n in order], preempted,
                              self._finished_ids)
        self._finished_ids = []
        self._check_invariants(out)
        return out


@contextlib.contextmanager
def plan_in_engine(engine, plan_step, check: bool = True):
    """Run ``engine`` (an LLMEngine with no unfinished requests) with ``plan_step``
    planning every step: a ``PlanLabScheduler`` (a copy of the engine's scheduler, same
    config and KV cache manager, empty queues) goes into ``engine.scheduler``; the
    original comes back at exit, and requests left unfinished (a failed check) are
    aborted so that their blocks return to the pool."""
    if engine.has_unfinished_requests():
        raise ValueError("plan_in_engine needs an engine with no unfinished requests")
    old = engine.scheduler
    lab = copy.copy(old)
    lab.__class__ = PlanLabScheduler
    lab.waiting, lab.running, lab.requests, lab._finished_ids = deque(), [], {}, []
    lab.num_preemptions = 0
    lab.lab_plan, lab.lab_check, lab.lab_steps = plan_step, check, 0
    engine.scheduler = lab
    try:
        yield lab
    finally:
        for rid in list(lab.requests):
            engine.abort_request(rid)
        engine.scheduler = old


# The lab's workload: (arrival step, prompt length, output tokens), on the tiny float64 Llama.
LAB_REQUESTS = [(0, 9, 8), (0, 3, 10), (0, 14, 6), (1, 5, 7), (2, 11, 5), (2, 2, 9),
                (4, 7, 6), (6, 12, 4)]


def lab_arrivals(requests=LAB_REQUESTS):
    from folo_edu.sampling_params import SamplingParams

    return [(step, f"r{i}", {"prompt_token_ids": [(13 * i + 7 * j) % 250 + 3
                                                  for j in range(plen)]},
             SamplingParams(temperature=0, max_tokens=out, ignore_eos=True))
            for i, (step, plen, out) in enumerate(requests)]


def plan_lab_engine(model_dir, chunked: bool, max_num_seqs: int = 3,
                    max_num_batched_tokens: int | None = None, dtype: str = "float64"):
    """A budget of 16 tokens with chunked prefill, 24 (= max_model_len, the least it may
    be) without: small enough that it binds in both."""
    from folo_edu.engine.llm_engine import LLMEngine

    if max_num_batched_tokens is None:
        max_num_batched_tokens = 16 if chunked else 24

    return LLMEngine.from_kwargs(str(model_dir), skip_tokenizer_init=True, dtype=dtype,
                                 max_model_len=24, block_size=4, num_kv_blocks=64,
                                 max_num_seqs=max_num_seqs,
                                 max_num_batched_tokens=max_num_batched_tokens,
                                 enable_chunked_prefill=chunked, seed=0)


def check_plan_step(fn) -> bool:
    """Check ``fn(running, waiting, budget, max_num_seqs, chunked) -> [(request_id,
    num_tokens), ...]``, where running and waiting are lists of (request_id, tokens left):
    first on hand-made cases against the rule, then as the planner of a real engine
    (``plan_in_engine``) on a tiny float64 Llama with 8 requests arriving over 7 steps,
    3 seats, with chunked prefill (budget 16) and without (budget 24): every step's plan
    must follow the rule (so budget and seats hold), and the tokens must equal the
    reference engine's and transformers'."""
    what = WHAT_PLAN
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    name, *args = PLAN_CASES[0]
    try:
        stub = fn(*copy.deepcopy(args)) is None  # the stub: `...  # your code here`
    except Exception:
        stub = False
    if stub:
        return not_answered(what)
    for name, running, waiting, budget, seats, chunked in PLAN_CASES:
        where = (f"(case: {name}; running {running}, waiting {waiting}, budget {budget}, "
                 f"max_num_seqs {seats}, chunked {chunked})")
        try:
            got = fn(list(running), list(waiting), budget, seats, chunked)
        except Exception as e:
            raise LabCheckFailed(f"{what} {where}: raised {type(e).__name__}: {e}") from None
        problem = _diagnose_plan(_as_plan(got, where), running, waiting, budget, seats, chunked)
        if problem:
            raise LabCheckFailed(f"{what} {where}: {problem}")

    from folo_edu.labs.m1_forward import _transformers_greedy
    from folo_edu.labs.m1_sampling import tiny_lab_model
    from folo_edu.viz.batching import record_timeline

    model_dir, steps, total = tiny_lab_model(), 0, 0
    arrivals = lab_arrivals()
    for chunked in (True, False):
        reference = record_timeline(plan_lab_engine(model_dir, chunked), arrivals)
        engine = plan_lab_engine(model_dir, chunked)
        with plan_in_engine(engine, fn) as lab:
            yours = record_timeline(engine, arrivals)
            steps += lab.lab_steps
        if yours.token_ids != reference.token_ids:
            raise LabCheckFailed(f"{what}: every plan followed the rule, but the tokens differ "
                                 "from the reference engine's; run the cell again, and if it "
                                 "persists report it")
        total += sum(map(len, yours.token_ids.values()))
    hf = _transformers_greedy(model_dir, [a[2]["prompt_token_ids"] for a in arrivals],
                              max(a[3].max_tokens for a in arrivals))
    if [yours.token_ids[a[1]] for a in arrivals] != [h[:a[3].max_tokens]
                                                  for h, a in zip(hf, arrivals)]:
        raise LabCheckFailed(f"{what}: the engine's tokens differ from transformers'; run the "
                             "cell again, and if it persists report it")
    return report_pass(f"{what} follows the rule on {len(PLAN_CASES)} cases and planned "
                       f"{steps} engine steps (with and without chunked prefill) within "
                       f"budget and seats; the engine with your plans inside generated the "
                       f"same {total} tokens as the reference engine and transformers")
