"""Checks for notebooks/08_prefix_caching.ipynb (milestone M6).

The lab: the learner writes the longest-cached-prefix lookup, the function that decides
how many of a new request's tokens it can take from the prefix cache instead of
computing them:

    longest_cached_prefix(token_ids, block_size, lookup) -> list[int]

``lookup(block_index, parent_block, block_tokens)`` wraps the engine's BlockPool: it
hashes block ``block_index`` of the request (the sha256 chain over every token up to the
block's end), finds the cached block with that hash, and confirms it holds exactly
``block_tokens`` right after ``parent_block`` (the physical block found for the block
before, None for the first). It returns that block's id, or None on a miss.

The seam: ``LabPrefixKVCacheManager`` is the package's KVCacheManager except that
``find_cached_prefix`` asks the learner's function; ``prefix_lookup_in_engine`` swaps
one (a copy of the engine's idle manager) into ``engine.kv_manager`` and
``engine.scheduler.kv`` and puts the originals back at exit. The reference is
KVCacheManager.find_cached_prefix.
"""
from __future__ import annotations

import contextlib
import copy

from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.labs import LabCheckFailed, not_answered, report_pass

WHAT = "longest_cached_prefix (the prefix-cache lookup)"


def reference_longest_cached_prefix(token_ids, block_size, lookup) -> list[int]:
    """What KVCacheManager.find_cached_prefix does, on the lab's interface."""
    hit: list[int] = []
    for i in range((len(token_ids) - 1) // block_size):  # full blocks, last token left out
        block = lookup(i, hit[-1] if hit else None,
                       list(token_ids[i * block_size:(i + 1) * block_size]))
        if block is None:
            break
        hit.append(block)
    return hit


# ---- hand-made cases: a fake pool that records every call ------------------------------
class _FakePool:
    """Cached blocks keyed by (block_index, parent, tokens), as the chain hash would key
    them; ``loose`` entries match whatever the parent (a pool that did not verify it),
    so a lookup that goes on after a miss, or passes a wrong parent, is seen."""

    def __init__(self, token_ids, block_size, cached_indices, ids, loose=()):
        self.token_ids, self.block_size = list(token_ids), block_size
        self.entries, self.loose = {}, {}
        parent = None
        for i in range(len(token_ids) // block_size):
            toks = tuple(token_ids[i * block_size:(i + 1) * block_size])
            if i in cached_indices:
                self.entries[(i, parent, toks)] = ids[i]
                parent = ids[i]
            else:
                parent = -1  # a block nobody cached: its children can't be found
            if i in loose:
                self.loose[(i, toks)] = ids[i]
        self.calls: list[tuple] = []

    def __call__(self, block_index, parent_block, block_tokens):
        toks = tuple(block_tokens)
        self.calls.append((block_index, parent_block, toks))
        found = self.entries.get((block_index, parent_block, toks))
        if found is None:
            found = self.loose.get((block_index, toks))
        return found


def _seq(n, start=10):
    return [start + 3 * i % 97 for i in range(n)]


# (name, token_ids, block_size, cached block indices, physical ids, loose indices)
CASES = [
    ("18 tokens, blocks of 4, the first 4 blocks cached", _seq(18), 4, {0, 1, 2, 3},
     [7, 2, 9, 4], ()),
    ("a miss at block 2 of 5 (blocks 3 and 4 of another request look alike)", _seq(22), 4,
     {0, 1, 3, 4}, [5, 8, 1, 3, 6], (3, 4)),
    ("16 tokens, blocks of 4, every block cached (the last token must be computed)",
     _seq(16, 40), 4, {0, 1, 2, 3}, [11, 12, 13, 14], ()),
    ("a 3-token prompt, blocks of 4 (no full block)", _seq(3), 4, set(), [], ()),
    ("nothing cached", _seq(12), 4, set(), [0, 1, 2], ()),
    ("13 tokens, blocks of 3, blocks 0-3 cached", _seq(13, 5), 3, {0, 1, 2, 3},
     [20, 21, 22, 23], ()),
]


def _diagnose(got, calls, token_ids, block_size, expected) -> str | None:
    """None if ``got`` is right, else a hint naming the likely bug. ``calls`` are the
    lookups the learner made, in order: (block_index, parent_block, tokens, answer)."""
    if not isinstance(got, (list, tuple)) or not all(
            isinstance(b, int) and not isinstance(b, bool) for b in got):
        return (f"returned {got!r}; return a list of block ids (ints), [] when nothing is "
                "cached")
    got, bs, n = list(got), block_size, len(token_ids)
    answers: dict[int, object] = {}
    missed_at = None
    for i, parent, toks, answer in calls:
        if (i + 1) * bs > n:
            return (f"looked up block {i}, which holds only {max(0, n - i * bs)} of {bs} "
                    "tokens: only full blocks are ever cached, never a partial last block")
        if toks != tuple(token_ids[i * bs:(i + 1) * bs]):
            return (f"block {i} was looked up with the wrong tokens: block i holds "
                    f"token_ids[i * block_size:(i + 1) * block_size] (off by one in the "
                    "slice?)")
        if missed_at is not None and i > missed_at:
            return (f"went on looking (block {i}) after a miss at block {missed_at}: a "
                    "prefix ends at the first block that is not cached; stop there")
        if i == 0 and parent is not None:
            return "block 0 has no parent: pass parent_block=None for the first block"
        if i > 0 and parent != answers.get(i - 1):
            return (f"block {i} was looked up with parent {parent!r}, not the block found for "
                    f"block {i - 1} ({answers.get(i - 1)!r}). A block's K/V depend on every "
                    "token before it, so a block is only the same after the same parent: "
                    "the lookup must follow the chain")
        answers[i] = answer
        if answer is None and missed_at is None:
            missed_at = i
    if got == expected:
        return None
    if n >= bs and len(got) * bs >= n:
        return (f"{len(got)} blocks hold {len(got) * bs} tokens, the whole {n}-token prompt: "
                "take at most num_tokens - 1 tokens from the cache, because the last token "
                "must be computed to get the logits of the next one")
    if len(got) < len(expected):
        return (f"returned {len(got)} blocks, but the first {len(expected)} full blocks are "
                "cached: look up every full block of token_ids[:-1] until the first miss")
    return (f"returned {got}: return the blocks lookup found, in order, up to the first "
            "miss")


class _RecordingLookup:
    """Wraps a lookup; remembers each call and its answer for the diagnosis."""

    def __init__(self, lookup):
        self.lookup, self.calls = lookup, []

    def __call__(self, block_index, parent_block, block_tokens):
        if isinstance(block_index, bool) or not isinstance(block_index, int) or block_index < 0:
            raise LabCheckFailed(f"{WHAT}: lookup got block_index={block_index!r}; pass the "
                                 "block's index 0, 1, 2, ... in the request")
        result = self.lookup(block_index, parent_block, list(block_tokens))
        self.calls.append((block_index, parent_block, tuple(block_tokens), result))
        return result


def _call(fn, token_ids, block_size, lookup, where):
    try:
        return fn(list(token_ids), block_size, lookup)
    except LabCheckFailed:
        raise
    except Exception as e:
        raise LabCheckFailed(f"{WHAT} {where}: raised {type(e).__name__}: {e}") from None


def _run_case(fn, name, token_ids, block_size, cached, ids, loose):
    pool = _FakePool(token_ids, block_size, cached, ids, loose)
    expected = reference_longest_cached_prefix(token_ids, block_size,
                                               _FakePool(token_ids, block_size, cached, ids))
    rec = _RecordingLookup(pool)
    got = _call(fn, token_ids, block_size, rec, f"(case: {name})")
    return got, rec.calls, expected


# ---- the seam: the learner's lookup inside a real engine ---------------------------------
class LabPrefixKVCacheManager(KVCacheManager):
    """The engine's KV cache manager, except that ``find_cached_prefix`` asks the
    learner's ``longest_cached_prefix(token_ids, block_size, lookup)``; ``lookup`` wraps
    the pool (the request's chain hash for that block index, then BlockPool.lookup,
    which confirms the tokens and the parent). Allocation, caching and freeing are the
    package's. With ``check=True`` every answer is compared with the reference."""

    def find_cached_prefix(self, request) -> list[int]:
        if not self.enable_prefix_caching:
            return []
        tokens = list(request.all_token_ids)
        hashes = self._block_hashes(request)
        where = (f"(engine: request {request.request_id} with {len(tokens)} tokens, blocks "
                 f"of {self.block_size})")

        def lookup(block_index, parent_block, block_tokens):
            if block_index >= len(hashes):
                raise LabCheckFailed(
                    f"{WHAT} {where}: looked up block {block_index}, but the request has "
                    f"only {len(hashes)} full blocks: a partial last block is never cached")
            return self.pool.lookup(hashes[block_index], parent_block, block_tokens)

        rec = _RecordingLookup(lookup)
        got = _call(self.lab_fn, tokens, self.block_size, rec, where)
        self.lab_calls += 1
        if self.lab_check:
            expected = super().find_cached_prefix(request)
            problem = _diagnose(got, rec.calls, tokens, self.block_size, expected)
            if problem:
                raise LabCheckFailed(f"{WHAT} {where}: {problem}")
        got = list(got or [])
        self.lab_hit_tokens += len(got) * self.block_size
        return got


@contextlib.contextmanager
def prefix_lookup_in_engine(engine, longest_cached_prefix, check: bool = True):
    """Run ``engine`` (an LLMEngine, prefix caching on) with ``longest_cached_prefix``
    finding every waiting request's cache hit: a ``LabPrefixKVCacheManager`` (a copy of
    the engine's idle manager, its cache included) goes into ``engine.kv_manager`` and
    ``engine.scheduler.kv``; the originals come back at exit."""
    if engine.has_unfinished_requests():
        raise ValueError("prefix_lookup_in_engine needs an engine with no unfinished requests")
    if not engine.kv_manager.enable_prefix_caching:
        raise ValueError("prefix_lookup_in_engine needs an engine with prefix caching on")
    old_engine_kv, old_sched_kv = engine.kv_manager, engine.scheduler.kv
    lab = copy.deepcopy(old_engine_kv)
    lab.__class__ = LabPrefixKVCacheManager
    lab.lab_fn, lab.lab_check, lab.lab_calls, lab.lab_hit_tokens = (
        longest_cached_prefix, check, 0, 0)
    engine.kv_manager = engine.scheduler.kv = lab
    try:
        yield lab
    finally:
        engine.kv_manager, engine.scheduler.kv = old_engine_kv, old_sched_kv


# The engine workload: blocks of 4; a 10-token system prompt shared by requests arriving
# over several steps, a prompt that is a whole number of blocks sent twice, a second chat
# turn (the first turn's prompt + answer + a new question), and a stranger.
SYSTEM = [(11 * j) % 250 + 3 for j in range(10)]
LAB_ARRIVALS = [  # (step, request id, prompt token ids, max_tokens)
    (0, "a", SYSTEM + [200, 201, 202], 6),
    (2, "b", SYSTEM + [210, 211], 5),
    (3, "c", [(7 * j) % 250 + 3 for j in range(16)], 4),
    (5, "d", SYSTEM + [220, 221, 222, 223, 224], 4),
    (7, "c2", [(7 * j) % 250 + 3 for j in range(16)], 4),
    (8, "e", [(13 * j) % 250 + 3 for j in range(9)], 5),
]
TURN2_OF = "a"  # when it finishes: its prompt + its answer + TURN2_QUESTION arrive as "a2"
TURN2_QUESTION = [230, 231, 232]


def run_prefix_workload(engine, arrivals=LAB_ARRIVALS, turn2_of=TURN2_OF,
                        turn2_question=TURN2_QUESTION, max_steps: int = 500) -> dict:
    """Add each request before its step, and the second turn when the first finishes;
    step to the end. Returns {request id: (output token ids, num_cached_tokens)}."""
    from folo_edu.sampling_params import SamplingParams

    def params(n):
        return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)

    pending = sorted(arrivals, key=lambda a: a[0])
    prompts = {rid: list(p) for _, rid, p, _ in arrivals}
    done: dict[str, tuple[list[int], int]] = {}
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] <= step:
            _, rid, prompt, n = pending.pop(0)
            engine.add_request(rid, {"prompt_token_ids": prompt}, params(n))
        for out in engine.step():
            if out.finished:
                done[out.request_id] = (list(out.outputs[0].token_ids), out.num_cached_tokens)
                if out.request_id == turn2_of:
                    prompt = prompts[turn2_of] + done[turn2_of][0] + list(turn2_question)
                    engine.add_request(f"{turn2_of}2", {"prompt_token_ids": prompt}, params(4))
        step += 1
        if step > max_steps:
            raise RuntimeError("run_prefix_workload: unfinished after max_steps")
    return done


def lab_engine(model_dir, num_kv_blocks: int = 40, block_size: int = 4, dtype="float64",
               enable_prefix_caching: bool = True, max_num_batched_tokens: int = 32):
    from folo_edu.engine.llm_engine import LLMEngine

    return LLMEngine.from_kwargs(str(model_dir), skip_tokenizer_init=True, dtype=dtype,
                                 block_size=block_size, num_kv_blocks=num_kv_blocks,
                                 max_model_len=64, max_num_seqs=4, seed=0,
                                 max_num_batched_tokens=max_num_batched_tokens,
                                 enable_prefix_caching=enable_prefix_caching)


def check_longest_cached_prefix(fn) -> bool:
    """Check ``fn(token_ids, block_size, lookup) -> list[int]``: the blocks of the longest
    cached prefix, at most len(token_ids) - 1 tokens, full blocks only, stopping at the
    first miss, each block looked up after its parent. First on hand-made cases, then
    inside a real engine (``prefix_lookup_in_engine``) on a tiny float64 Llama with blocks
    of 4: every request must get the reference's hit (num_cached_tokens) and the tokens
    must equal the reference engine's and those of an engine without prefix caching."""
    if fn is None:
        return not_answered(WHAT)
    if not callable(fn):
        raise LabCheckFailed(f"{WHAT}: {fn!r} is not a function; pass the function itself")
    got, _, _ = _run_case(fn, *CASES[0])
    if got is None:  # the stub
        return not_answered(WHAT)
    for name, token_ids, bs, cached, ids, loose in CASES:
        got, calls, expected = _run_case(fn, name, token_ids, bs, cached, ids, loose)
        problem = _diagnose(got, calls, token_ids, bs, expected)
        if problem:
            raise LabCheckFailed(f"{WHAT} (case: {name}): {problem}")

    from folo_edu.labs.m1_sampling import tiny_lab_model

    model_dir = tiny_lab_model()
    reference = run_prefix_workload(lab_engine(model_dir))
    no_cache = run_prefix_workload(lab_engine(model_dir, enable_prefix_caching=False))
    engine = lab_engine(model_dir)
    with prefix_lookup_in_engine(engine, fn) as kv:
        yours = run_prefix_workload(engine)
        calls, leaked = kv.lab_calls, kv.num_blocks - kv.num_free_blocks
    for rid, (tokens, cached) in reference.items():
        if yours[rid][1] != cached:
            raise LabCheckFailed(f"{WHAT}: in the engine, request {rid} took "
                                 f"{yours[rid][1]} tokens from the cache, the reference "
                                 f"{cached}; every lookup matched the reference, so report it")
    if {r: t for r, (t, _) in yours.items()} != {r: t for r, (t, _) in reference.items()}:
        raise LabCheckFailed(f"{WHAT}: the hits match the reference but the tokens differ; "
                             "run the cell again, and if it persists report it")
    if leaked:
        raise LabCheckFailed(f"{WHAT}: {leaked} blocks are still held after the run")
    same_as_off = all(yours[r][0] == no_cache[r][0] for r in yours)
    hit_tokens = sum(c for _, c in yours.values())
    return report_pass(
        f"{WHAT} agrees with the reference on {len(CASES)} cases and {calls} lookups in the "
        f"engine: {sum(c > 0 for _, c in yours.values())} of {len(yours)} requests hit, "
        f"{hit_tokens} prompt tokens came from the cache, as in the reference; the tokens "
        f"equal the reference engine's"
        + (" and those of an engine without prefix caching" if same_as_off else ""))


def measure_hits(model_dir, longest_cached_prefix, num_kv_blocks=(12, 16, 24, 40)) -> list[dict]:
    """The lab workload with ``longest_cached_prefix`` inside (unchecked), once per cache
    size: [{"num_kv_blocks", "cached_tokens", "prompt_tokens", "evictions",
    "seconds"}]. A small cache evicts blocks before they are asked for again."""
    import time

    rows = []
    for n in num_kv_blocks:
        engine = lab_engine(model_dir, num_kv_blocks=n, dtype="float32")
        with prefix_lookup_in_engine(engine, longest_cached_prefix, check=False):
            start = time.perf_counter()
            done = run_prefix_workload(engine)
            seconds = time.perf_counter() - start
            stats = engine.get_stats()
        rows.append({"num_kv_blocks": n, "cached_tokens": stats["prefix_cache_hits"],
                     "prompt_tokens": stats["prefix_cache_queries"],
                     "hit_rate": stats["prefix_cache_hit_rate"],
                     "evictions": stats["prefix_cache_evictions"],
                     "requests_with_a_hit": sum(c > 0 for _, c in done.values()),
                     "seconds": seconds})
    return rows
