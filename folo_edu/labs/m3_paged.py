"""Checks for notebooks/05_paged_kv_cache.ipynb (milestone M3).

The exercises: how many blocks a request needs, which cache slot a token lands
in (the slot-mapping formula), and how many requests fit a pool of blocks. The
references are folo_edu.viz.paged.blocks_needed and folo_edu.kv_cache.slots.slot_of,
the slot formula the engine itself uses.
"""
from __future__ import annotations

import contextlib
import copy

from folo_edu.labs import LabCheckFailed, hint, not_answered, report_pass, require_number
from folo_edu.kv_cache.manager import KVCacheManager
from folo_edu.kv_cache.slots import slot_of
from folo_edu.viz.paged import blocks_needed

# Exercise 1: a request with a 37-token prompt that has generated 20 tokens, blocks of 16.
EXERCISE_NUM_TOKENS = 57
EXERCISE_BLOCK_SIZE = 16
# Exercise 2: the slot of position 19 for block table [6, 1, 9, 4], blocks of 8 tokens.
EXERCISE_BLOCK_TABLE = (6, 1, 9, 4)
EXERCISE_SLOT_BLOCK_SIZE = 8
EXERCISE_POSITION = 19
# Exercise 3: a pool of 64 blocks of 16 tokens; every request will reach 100 tokens.
EXERCISE_POOL_BLOCKS = 64
EXERCISE_TOKENS_PER_REQUEST = 100


def check_blocks_needed(answer, num_tokens: int = EXERCISE_NUM_TOKENS,
                        block_size: int = EXERCISE_BLOCK_SIZE) -> bool:
    """Check the number of KV blocks a request holding ``num_tokens`` tokens needs."""
    what = f"blocks for {num_tokens} tokens in blocks of {block_size}"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = blocks_needed(num_tokens, block_size)
    if answer == expected:
        waste = expected * block_size - num_tokens
        return report_pass(f"{what} = {expected} ({waste} empty slots in the last block)")
    hints = [
        (num_tokens // block_size, "rounded down: the tokens past the last full block "
                                   "still need a block of their own"),
        (num_tokens / block_size, "a block is all or nothing: round up to a whole number"),
        (expected + 1, "one block too many: the last block may be partly empty, "
                       "but it need not be full"),
        (num_tokens, "that is tokens, not blocks"),
    ]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "divide the tokens by the block size and round up"))


def check_slot(answer, block_table=EXERCISE_BLOCK_TABLE,
               block_size: int = EXERCISE_SLOT_BLOCK_SIZE,
               position: int = EXERCISE_POSITION) -> bool:
    """Check the cache slot of the token at ``position`` of a request."""
    table = list(block_table)
    what = f"the slot of position {position} (block table {table}, block size {block_size})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = slot_of(table, block_size, position)
    if answer == expected:
        return report_pass(f"{what} = {table[position // block_size]} x {block_size} + "
                           f"{position % block_size} = {expected}")
    j, off = position // block_size, position % block_size
    hints = [
        (position, "that is the logical position: look its block up in the block table"),
        (table[j], "that is the physical block id; a slot counts tokens, so multiply by the "
                   "block size and add the offset"),
        (table[j] * block_size, "that is the block's first slot: add the offset "
                                "position % block_size"),
        (off, "that is only the offset within the block"),
    ]
    if j >= 1:
        hints.append((table[j - 1] * block_size + off, "off by one block: logical block "
                                                       "numbers start at 0"))
    if j + 1 < len(table):
        hints.append((table[j + 1] * block_size + off, "off by one block: logical block "
                                                       "numbers start at 0"))
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "slot = block_table[position // block_size] * block_size "
                       "+ position % block_size"))


def check_requests_that_fit(answer, pool_blocks: int = EXERCISE_POOL_BLOCKS,
                            block_size: int = EXERCISE_BLOCK_SIZE,
                            tokens_per_request: int = EXERCISE_TOKENS_PER_REQUEST) -> bool:
    """Check how many requests of ``tokens_per_request`` tokens can all run to the end at
    once in a paged pool of ``pool_blocks`` blocks."""
    what = (f"requests of {tokens_per_request} tokens that fit {pool_blocks} blocks of "
            f"{block_size}")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    per = blocks_needed(tokens_per_request, block_size)
    expected = pool_blocks // per
    if answer == expected:
        return report_pass(f"{what} = {pool_blocks} // {per} = {expected}")
    slots = pool_blocks * block_size
    hints = [
        (slots // tokens_per_request, "that counts tokens as if they shared blocks: each "
                                      "request has its own partly empty last block"),
        (pool_blocks // max(1, tokens_per_request // block_size),
         "rounded the blocks per request down: round them up"),
        (pool_blocks / per, "a request cannot run with part of its blocks: round down"),
    ]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "blocks per request = ceil(tokens / block size); then divide the "
                       "pool by it and round down"))


# ---- notebook 05 lab: allocate_slots --------------------------------------------------
WHAT_ALLOC = "allocate_slots (the KV cache manager's block allocation)"


def reference_allocate(table, num_computed, num_new, block_size, free_blocks):
    """What KVCacheManager.allocate_slots decides: the new blocks (the first ones of the
    free list), [] when the table already has room, None when too few are free."""
    need = -(-(num_computed + num_new) // block_size) - len(table)
    if need > len(free_blocks):
        return None
    return list(free_blocks[:max(0, need)])


def _free_block_ids(pool) -> list[int]:
    """The pool's free block ids in the order it hands them out."""
    return list(pool.free_queue)


# (name, table, num_computed, num_new, block_size, free_blocks)
ALLOC_CASES = [
    ("a new 37-token prompt, blocks of 16", [], 0, 37, 16, [7, 3, 12, 5, 9]),
    ("a decode that still fits the last block (21 tokens in 2 blocks of 16)", [4, 1], 20, 1,
     16, [7, 3, 12]),
    ("a decode that needs one more block (33 tokens, blocks of 16)", [4, 1], 32, 1, 16,
     [7, 3, 12]),
    ("a decode that fills its last block exactly (32 tokens)", [4, 1], 31, 1, 16, [7, 3]),
    ("a prefill chunk of 30 tokens after 10 (blocks of 8)", [2, 6], 10, 30, 8,
     [0, 11, 4, 9, 1, 3]),
    ("a prompt of 40 that needs 3 blocks of 16 when only 2 are free", [], 0, 40, 16, [2, 8]),
    ("a chunk that needs 2 more blocks when 1 is free", [0], 16, 20, 16, [5]),
]


def _diagnose_alloc(got, table, num_computed, num_new, block_size, free_blocks) -> str | None:
    """None if ``got`` is right, else a hint naming the likely bug."""
    expected = reference_allocate(table, num_computed, num_new, block_size, free_blocks)
    if got is not None and not isinstance(got, list):
        try:
            got = list(got)
        except TypeError:
            return (f"returned {type(got).__name__}; return a list of block ids (or None when "
                    "too few blocks are free)")
    if got == expected:
        return None
    total = num_computed + num_new
    have = len(table)
    if expected is None:
        if got:
            return (f"{len(free_blocks)} free blocks are too few for the "
                    f"{-(-total // block_size) - have} this request needs: return None and "
                    "take none (a partial allocation leaves the request unable to run and the "
                    "blocks lost to everybody else)")
        return ("too few blocks are free: return None (an empty list says 'no new block "
                "needed', and the engine would run without room for the tokens)")
    if got is None:
        return (f"{len(free_blocks)} blocks are free, enough for this request: return the new "
                "blocks (None means 'too few free', and the scheduler would preempt somebody)")
    held = [b for b in got if b in table]
    if held:
        return (f"block {held[0]} is already in this request's table: new blocks come from "
                "free_blocks only, never one that is held")
    not_free = [b for b in got if b not in free_blocks]
    if not_free:
        return (f"block {not_free[0]} is not in free_blocks: it may be held by another "
                "request; take new blocks from free_blocks only")
    if len(set(got)) != len(got):
        return "the same block appears twice in what you returned"
    n = len(got)

    def count(x):
        return max(0, x)
    # Case 1 (an empty table) tells floor from the rest, so "num_new alone" goes first.
    wrong_counts = [
        (-(-num_new // block_size), "count the blocks for ALL the request's tokens, "
                                    "num_computed + num_new, not for num_new alone"),
        (count(-(-num_new // block_size) - have), "count the blocks for ALL the request's "
                                                  "tokens, num_computed + num_new, not for "
                                                  "num_new alone"),
        (count(total // block_size - have), "rounded down: the tokens past the last full "
                                            "block need a block too (ceil, not floor)"),
        (-(-total // block_size), "the request already holds len(table) blocks: allocate "
                                  "only the ones it lacks"),
        (len(expected) + 1, "one block too many: ceil((num_computed + num_new) / block_size) "
                            "blocks in all"),
    ]
    for value, text in wrong_counts:
        if n == value and n != len(expected):
            return f"{n} new blocks: {text}"
    if n == len(expected):
        return ("take the FIRST blocks of free_blocks, in order (free_blocks[:n]): the pool "
                "hands out the block freed longest ago first")
    return (f"returned {n} new blocks, expected {len(expected)}: a request holding "
            "num_computed + num_new tokens needs ceil(that / block_size) blocks in all")


def _call_alloc(fn, table, num_computed, num_new, block_size, free_blocks, where):
    try:
        return fn(list(table), num_computed, num_new, block_size, list(free_blocks))
    except LabCheckFailed:
        raise
    except Exception as e:
        raise LabCheckFailed(f"{WHAT_ALLOC} {where}: raised {type(e).__name__}: {e}") from None


class LabKVCacheManager(KVCacheManager):
    """The engine's KV cache manager, except that ``allocate_slots`` asks the learner's
    ``allocate(table, num_computed, num_new, block_size, free_blocks)`` which new blocks a
    request gets; the manager then takes exactly those from its pool and appends them to
    the request's block table. Freeing is the package's. With ``check=True`` every
    decision is compared with the reference, and after every allocation no block may be
    in two tables or both in a table and on the free list."""

    def allocate_slots(self, request, num_new_tokens: int, cached_blocks=None) -> bool:
        if cached_blocks:  # a prefix-cache hit (M6): the package's own path
            return super().allocate_slots(request, num_new_tokens, cached_blocks)
        rid = request.request_id
        table = self.block_tables.get(rid, [])
        free = _free_block_ids(self.pool)
        args = (table, request.num_computed_tokens, num_new_tokens, self.block_size, free)
        where = (f"(engine: request {rid} holds {len(table)} blocks and "
                 f"{request.num_computed_tokens} tokens, asks for {num_new_tokens} more; "
                 f"{len(free)} free blocks of {self.block_size})")
        got = _call_alloc(self.lab_allocate, *args, where)
        self.lab_calls += 1
        if self.lab_check:
            problem = _diagnose_alloc(got, *args)
            if problem:
                raise LabCheckFailed(f"{WHAT_ALLOC} {where}: {problem}")
        if got is None:
            return False
        got = list(got)
        if got:
            taken = self.pool.allocate(len(got))
            if taken != got:
                raise LabCheckFailed(f"{WHAT_ALLOC} {where}: returned {got}, but the pool hands "
                                     f"out the first free blocks {taken}; take "
                                     "free_blocks[:n]")
            self.block_tables.setdefault(rid, []).extend(got)
        if self.lab_check:
            self._check_no_block_twice(where)
        return True

    def _check_no_block_twice(self, where) -> None:
        held = [b for t in self.block_tables.values() for b in t]
        free = set(_free_block_ids(self.pool))
        twice = {b for b in held if held.count(b) > 1} | (set(held) & free)
        if twice:
            raise LabCheckFailed(f"{WHAT_ALLOC} {where}: block(s) {sorted(twice)} are held "
                                 "twice (in two block tables, or held and free at once)")


@contextlib.contextmanager
def allocator_in_engine(engine, allocate, check: bool = True):
    """Run ``engine`` (an LLMEngine) with ``allocate`` deciding its block allocations: a
    ``LabKVCacheManager`` (a copy of the engine's idle manager) goes into
    ``engine.kv_manager`` and ``engine.scheduler.kv``; the originals come back at exit."""
    if engine.has_unfinished_requests():
        raise ValueError("allocator_in_engine needs an engine with no unfinished requests")
    old_engine_kv, old_sched_kv = engine.kv_manager, engine.scheduler.kv
    lab = copy.deepcopy(old_engine_kv)
    lab.__class__ = LabKVCacheManager
    lab.lab_allocate, lab.lab_check, lab.lab_calls = allocate, check, 0
    engine.kv_manager = engine.scheduler.kv = lab
    try:
        yield lab
    finally:
        engine.kv_manager, engine.scheduler.kv = old_engine_kv, old_sched_kv


# 4 prompts of 10..13 tokens, 24 new tokens each, blocks of 4: each request reaches 9 blocks,
# and 14 blocks hold fewer than two of them, so the run preempts.
LAB_PROMPTS = [[(7 * i + 3 * j) % 250 + 3 for j in range(10 + i)] for i in range(4)]
LAB_MAX_TOKENS = 24


def _run_workload(engine, prompts=LAB_PROMPTS, max_tokens=LAB_MAX_TOKENS):
    from folo_edu.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    for i, p in enumerate(prompts):
        engine.add_request(f"r{i}", {"prompt_token_ids": p}, params)
    tokens, steps = {}, 0
    while engine.has_unfinished_requests():
        steps += 1
        for out in engine.step():
            tokens[out.request_id] = list(out.outputs[0].token_ids)
    return [tokens[f"r{i}"] for i in range(len(prompts))], steps


def lab_engine(model_dir, num_kv_blocks: int = 14, block_size: int = 4, dtype="float64",
               max_num_seqs: int = 4):
    from folo_edu.engine.llm_engine import LLMEngine

    return LLMEngine.from_kwargs(str(model_dir), skip_tokenizer_init=True, dtype=dtype,
                                 block_size=block_size, num_kv_blocks=num_kv_blocks,
                                 max_model_len=64, max_num_seqs=max_num_seqs, seed=0,
                                 enable_prefix_caching=False)


def check_allocate_slots(fn) -> bool:
    """Check ``fn(table, num_computed, num_new, block_size, free_blocks) -> list | None``:
    the new blocks a request needs to hold num_computed + num_new tokens (the first ones
    of free_blocks), [] when its table has room, None (taking nothing) when too few are
    free. First on hand-made cases, then inside a real engine (``allocator_in_engine``) on
    a tiny float64 Llama with 14 blocks of 4 tokens, a workload that forces preemption:
    the tokens must equal the reference engine's, every block must be free at the end, and
    no block may ever be held twice."""
    what = WHAT_ALLOC
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    name, *args = ALLOC_CASES[0]
    if _call_alloc(fn, *args, f"(case: {name})") is None:  # the stub returns None
        return not_answered(what)
    for name, *args in ALLOC_CASES:
        problem = _diagnose_alloc(_call_alloc(fn, *args, f"(case: {name})"), *args)
        if problem:
            raise LabCheckFailed(f"{what} (case: {name}: table {args[0]}, num_computed "
                                 f"{args[1]}, num_new {args[2]}, block_size {args[3]}, "
                                 f"free_blocks {args[4]}): {problem}")

    from folo_edu.labs.m1_sampling import tiny_lab_model

    model_dir = tiny_lab_model()
    reference_engine = lab_engine(model_dir)
    expected, expected_steps = _run_workload(reference_engine)
    engine = lab_engine(model_dir)
    with allocator_in_engine(engine, fn) as kv:
        tokens, steps = _run_workload(engine)
        stats = engine.get_stats()
        leaked = kv.num_blocks - kv.num_free_blocks
        calls = kv.lab_calls
    if leaked or kv.block_tables:
        raise LabCheckFailed(f"{what}: after every request finished, {leaked} blocks are still "
                             "held; a block must only ever enter a table through the blocks "
                             "you return")
    if tokens != expected:
        raise LabCheckFailed(f"{what}: every allocation matched the reference, but the tokens "
                             "differ from the reference engine's; run the cell again, and if "
                             "it persists report it")
    return report_pass(f"{what} agrees with the reference on {len(ALLOC_CASES)} cases and "
                       f"{calls} allocations in the engine ({stats['num_preemptions']} "
                       f"preemptions, {steps} steps as in the reference's {expected_steps}); "
                       f"the {sum(map(len, tokens))} tokens equal the reference engine's, "
                       "no block was held twice and none leaked")


def measure_cache_sizes(model_dir, allocate, num_kv_blocks=(10, 12, 14, 18, 24, 40),
                        prompts=LAB_PROMPTS, max_tokens: int = LAB_MAX_TOKENS) -> list[dict]:
    """The lab workload with ``allocate`` inside (unchecked), once per cache size:
    [{"num_kv_blocks", "steps", "preemptions", "seconds"}]."""
    import time

    rows = []
    for n in num_kv_blocks:
        engine = lab_engine(model_dir, num_kv_blocks=n, dtype="float32")
        with allocator_in_engine(engine, allocate, check=False):
            start = time.perf_counter()
            _, steps = _run_workload(engine, prompts, max_tokens)
            seconds = time.perf_counter() - start
            rows.append({"num_kv_blocks": n, "steps": steps, "seconds": seconds,
                         "preemptions": engine.get_stats()["num_preemptions"]})
    return rows
