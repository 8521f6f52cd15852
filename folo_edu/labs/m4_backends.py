"""Checks for notebooks/06_cuda_forward_pass.ipynb (milestone M4).

The exercises: which CUDA-graph bucket a decode batch runs in and how many padding rows
it gets; one online-softmax merge step of PagedAttention; and how much faster a
launch-bound decode step gets when a CUDA graph replays it. The references are
folo_edu.engine.cuda_graphs.bucket_of (what DecodeGraphRunner.bucket runs),
viz.decode_attention.online_softmax_merge, and the step-time model of
viz.op_overhead.model_step_time (step = launches x launch cost + work).
"""
from __future__ import annotations

import math

import torch

from folo_edu.attention.paged_torch import PagedTorchBackend
from folo_edu.attention.sdpa import sdpa_prefills
from folo_edu.engine.cuda_graphs import bucket_of, graph_batch_sizes
from folo_edu.labs import LabCheckFailed, hint, not_answered, report_pass, require_number
from folo_edu.viz.decode_attention import online_softmax_merge

# Exercise 1: 37 requests decode in an engine with max_num_seqs = 64.
EXERCISE_BATCH = 37
EXERCISE_MAX_BATCH = 64
# Exercise 2: running max 2.0 and running sum 3.0, then a tile with these scores.
EXERCISE_MAX, EXERCISE_SUM = 2.0, 3.0
EXERCISE_SCORES = (1.0, 4.0, 3.0)
# Exercise 3: a decode step of 600 kernels, 8 µs to launch each, 1.2 ms of GPU work.
EXERCISE_KERNELS = 600
EXERCISE_LAUNCH_US = 8.0
EXERCISE_WORK_MS = 1.2


def check_bucket(answer, batch: int = EXERCISE_BATCH, max_batch: int = EXERCISE_MAX_BATCH) -> bool:
    """Check the captured batch size (bucket) a decode batch of ``batch`` runs in."""
    sizes = graph_batch_sizes(max_batch)
    what = f"the bucket of a decode batch of {batch} (buckets {sizes})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    expected = bucket_of(batch, sizes)
    if answer == expected:
        return report_pass(f"{what} = {expected}, the smallest bucket >= {batch}")
    smaller = [s for s in sizes if s < batch]
    hints = [
        (batch, "a graph replays fixed shapes, so a batch must run in one of the captured "
                "sizes"),
        (max_batch, "that is the largest bucket; the runner picks the smallest that fits"),
        (-(-batch // 8) * 8, "the buckets are not multiples of 8: above 8 they step by 16"),
    ]
    if 2 ** math.ceil(math.log2(batch)) not in (expected, max_batch):
        hints.append((2 ** math.ceil(math.log2(batch)), "the buckets are powers of 2 only up "
                                                        "to 16, then multiples of 16"))
    if smaller:
        hints.append((smaller[-1], "that bucket is too small: the batch must fit in it"))
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "take the smallest captured batch size that is >= the batch"))


def check_padding_rows(answer, batch: int = EXERCISE_BATCH,
                       max_batch: int = EXERCISE_MAX_BATCH) -> bool:
    """Check how many padding rows a decode batch of ``batch`` gets in its bucket."""
    sizes = graph_batch_sizes(max_batch)
    what = f"the padding rows of a decode batch of {batch} (buckets {sizes})"
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    bucket = bucket_of(batch, sizes)
    expected = bucket - batch
    if answer == expected:
        return report_pass(f"{what} = {bucket} - {batch} = {expected} (slot -1, seq_len 0: "
                           "they store nothing and read nothing)")
    smaller = [s for s in sizes if s < batch]
    hints = [
        (0, "a graph replays the shapes it captured: the batch is padded up to its bucket"),
        (max_batch - batch, "that pads to the largest bucket; the runner picks the smallest "
                            "that fits"),
        (bucket, "that is the bucket itself; padding is bucket - batch"),
    ]
    if smaller:
        hints.append((batch - smaller[-1], "that is how far the batch is above the bucket "
                                           "below it; pad up to the next one"))
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "padding rows = (smallest bucket >= batch) - batch"))


def check_online_softmax(new_max, new_sum, m: float = EXERCISE_MAX, l: float = EXERCISE_SUM,
                         scores=EXERCISE_SCORES) -> bool:
    """Check one online-softmax step: the running max and sum after folding in a tile."""
    scores = list(scores)
    what = f"the running max and sum after the tile {scores} (from max {m}, sum {l})"
    if new_max is None or new_sum is None:
        return not_answered(what)
    require_number(what + " (max)", new_max)
    require_number(what + " (sum)", new_sum)
    m_new, l_new = online_softmax_merge(m, l, scores)
    if not math.isclose(new_max, m_new, rel_tol=1e-6, abs_tol=1e-9):
        hints = [(m, "the tile has a larger score: the new max is the larger of the two"),
                 (sum(scores), "the max of the scores, not their sum")]
        raise LabCheckFailed(f"{what}: max {new_max!r} is not right; " + hint(
            new_max, hints, "new max = max(running max, largest score of the tile)"))
    if math.isclose(new_sum, l_new, rel_tol=1e-3):
        return report_pass(f"{what}: max {m_new:g}, sum {l} x exp({m:g} - {m_new:g}) + "
                           f"sum(exp(s - {m_new:g})) = {l_new:.4f}")
    no_rescale = l + sum(math.exp(s - m_new) for s in scores)
    old_max = l + sum(math.exp(s - m) for s in scores)
    flipped = l * math.exp(m_new - m) + sum(math.exp(s - m_new) for s in scores)
    raw = l + sum(math.exp(s) for s in scores)
    tile_only = sum(math.exp(s - m_new) for s in scores)
    hints = [
        (no_rescale, "the running sum was taken under the old max: rescale it by "
                     "exp(old max - new max) before adding"),
        (old_max, "the tile's terms must use the new max, exp(s - new max), like the "
                  "rescaled running sum"),
        (flipped, "the rescale factor is exp(old max - new max), at most 1, not its inverse"),
        (raw, "subtract the max inside every exp(); that is what keeps it from overflowing"),
        (tile_only, "that is the tile alone: add the rescaled running sum"),
    ]
    raise LabCheckFailed(f"{what}: sum {new_sum!r} is not right; " + hint(
        new_sum, hints, "new sum = sum x exp(old max - new max) + sum over the tile of "
                        "exp(s - new max)", tol=1e-3))


def check_graph_speedup(answer, kernels: int = EXERCISE_KERNELS,
                        launch_us: float = EXERCISE_LAUNCH_US,
                        work_ms: float = EXERCISE_WORK_MS) -> bool:
    """Check eager step time / CUDA-graph step time under step = launches x cost + work."""
    what = (f"the speed-up of a step of {kernels} kernels ({launch_us:g} µs per launch, "
            f"{work_ms:g} ms of GPU work) replayed as one CUDA graph")
    if answer is None:
        return not_answered(what)
    require_number(what, answer)
    launch_ms = launch_us * 1e-3
    eager = kernels * launch_ms + work_ms  # every kernel launched from the host
    graph = launch_ms + work_ms            # one launch replays them all
    expected = eager / graph
    # 0.2 %: 4.97 passes; 5.0 (= eager / work, forgetting the replay's own launch) does not
    if math.isclose(answer, expected, rel_tol=0.002):
        return report_pass(f"{what}: eager {eager:.2f} ms / graph {graph:.3f} ms = "
                           f"{answer:g}x")
    launches_ms = kernels * launch_ms
    hints = [
        (launches_ms / work_ms, "that is launches / work; compare whole steps: "
                                "(launches + work) / (one launch + work)"),
        (graph / eager, "upside down: eager time / graph time"),
        (kernels - 1, "that is the launches saved, not the speed-up"),
        (launches_ms, "that is the milliseconds of launches saved, not the speed-up"),
        ((launches_ms + work_ms) / launches_ms, "the graph still does the work: divide by "
                                                "one launch + the work"),
        (eager / work_ms, "the replay is a launch too: graph step = ONE launch + the work, "
                          "not the work alone"),
    ]
    raise LabCheckFailed(f"{what}: {answer!r} is not right; " + hint(
        answer, hints, "eager = kernels x launch + work; graph = 1 launch + work; "
                       "speed-up = eager / graph", tol=0.002))


# ---- notebook 06 lab: paged decode attention (tiles + online softmax) -----------------
WHAT_PAGED = "paged_decode (PagedAttention for decodes: tiles and an online softmax)"


def _naive_paged(q, k_cache, v_cache, block_tables, seq_lens, scale, slot_fn=None,
                 lengths=None, expand="repeat_interleave"):
    """The reference (and, with the switches, common wrong versions): for each sequence,
    gather its keys through the block table, softmax(q . k * scale), weighted sum of v.
    ``slot_fn(table, pos, block_size)`` maps positions to slots; ``lengths`` overrides
    how many keys each sequence reads."""
    B, H, D = q.shape
    block_size, kvh = k_cache.shape[1], k_cache.shape[2]
    keys_flat, values_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.zeros_like(q)
    for b in range(B):
        n = int(seq_lens[b]) if lengths is None else int(lengths[b])
        if n <= 0:
            continue
        pos = torch.arange(n)
        table = block_tables[b].long()
        slots = (slot_fn or _slot)(table, pos, block_size)
        k, v = keys_flat[slots], values_flat[slots]            # [n, KVH, D]
        if expand == "repeat":
            k, v = k.repeat(1, H // kvh, 1), v.repeat(1, H // kvh, 1)
        else:
            k, v = k.repeat_interleave(H // kvh, 1), v.repeat_interleave(H // kvh, 1)
        weights = (torch.einsum("hd,nhd->hn", q[b], k) * scale).softmax(-1)
        out[b] = torch.einsum("hn,nhd->hd", weights, v)
    return out


def _slot(table, pos, block_size):
    return table[pos // block_size] * block_size + pos % block_size


def _tiled_no_rescale(q, k_cache, v_cache, block_tables, seq_lens, scale, tile,
                      fix_sum=False, fix_acc=False, divide=True):
    """The online softmax with the rescaling by exp(m_old - m_new) left out of the
    running sum (unless fix_sum) and of the accumulator (unless fix_acc)."""
    B, H, D = q.shape
    block_size, kvh = k_cache.shape[1], k_cache.shape[2]
    keys_flat, values_flat = k_cache.flatten(0, 1), v_cache.flatten(0, 1)
    out = torch.zeros_like(q)
    for b in range(B):
        n = int(seq_lens[b])
        m = torch.full((H,), float("-inf"), dtype=q.dtype)
        l, acc = torch.zeros(H, dtype=q.dtype), torch.zeros(H, D, dtype=q.dtype)
        for t0 in range(0, n, tile):
            pos = torch.arange(t0, min(t0 + tile, n))
            slots = _slot(block_tables[b].long(), pos, block_size)
            k = keys_flat[slots].repeat_interleave(H // kvh, 1)
            v = values_flat[slots].repeat_interleave(H // kvh, 1)
            s = torch.einsum("hd,nhd->hn", q[b], k) * scale
            m_new = torch.maximum(m, s.amax(-1))
            p = torch.exp(s - m_new[:, None])
            alpha = torch.exp(m - m_new)
            l = (l * alpha if fix_sum else l) + p.sum(-1)
            acc = (acc * alpha[:, None] if fix_acc else acc) + torch.einsum("hn,nhd->hd", p, v)
            m = m_new
        out[b] = acc / l[:, None] if divide else acc
    return out


def _wrong_paged_outputs(q, k_cache, v_cache, block_tables, seq_lens, scale, tile):
    """(output, hint) of common wrong implementations, most specific first."""
    args = (q, k_cache, v_cache, block_tables, seq_lens)
    B, H, D = q.shape
    block_size, kvh = k_cache.shape[1], k_cache.shape[2]
    lens = [int(n) for n in seq_lens]
    wrong = [
        (_tiled_no_rescale(*args, scale, tile),
         "when a tile raises the running max, rescale what you summed so far: "
         "l = l * exp(m_old - m_new) + sum(p) and acc = acc * exp(m_old - m_new) + p @ v"),
        (_tiled_no_rescale(*args, scale, tile, fix_sum=True),
         "the accumulator must be rescaled too when the max rises: "
         "acc = acc * exp(m_old - m_new) + p @ v"),
        (_tiled_no_rescale(*args, scale, tile, fix_acc=True),
         "the running sum must be rescaled too when the max rises: "
         "l = l * exp(m_old - m_new) + sum(p)"),
        (_tiled_no_rescale(*args, scale, tile, fix_sum=True, fix_acc=True, divide=False),
         "divide the accumulator by the running sum at the end (acc / l)"),
        (_naive_paged(*args, 1.0), "scale the scores by `scale` (1/sqrt(head_dim)) before "
                                   "the softmax"),
        (_naive_paged(*args, scale * scale), "the scores are multiplied by scale once "
                                             "(1/sqrt(D)), not twice"),
        (_naive_paged(*args, scale,
                      lengths=[min(-(-n // tile) * tile, block_tables.shape[1] * block_size)
                               for n in lens]),
         "you read the slots past seq_len in the last tile (stale K/V from earlier "
         "requests): mask positions >= seq_len to -inf before the softmax"),
        (_naive_paged(*args, scale, lengths=[block_tables.shape[1] * block_size] * B),
         "you read every slot of every block in the table; only positions < seq_len hold "
         "this sequence's tokens"),
        (_naive_paged(*args, scale, lengths=[n - 1 for n in lens]),
         "positions 0..seq_len-1 inclusive: the last one is the token being decoded"),
        (_naive_paged(*args, scale, slot_fn=lambda t, p, bs: t[p // bs] + p % bs),
         "slot = block_table[pos // block_size] * block_size + pos % block_size (you left "
         "out * block_size)"),
        (_naive_paged(*args, scale, slot_fn=lambda t, p, bs: t[p % bs] * bs + p // bs),
         "block index and offset are swapped: the block is pos // block_size, the offset "
         "pos % block_size"),
        (_naive_paged(*args, scale, slot_fn=lambda t, p, bs: p),
         "look each position up in the block table: the cache is paged, a sequence's "
         "blocks are scattered over the pool"),
        (_naive_paged(*args, scale, slot_fn=lambda t, p, bs: t[torch.clamp(p // tile, max=len(t) - 1)]
                      * bs + p % bs),
         "the block index is pos // block_size (the cache's block size), not pos // tile"),
    ]
    if H != kvh:
        wrong.append((_naive_paged(*args, scale, expand="repeat"),
                       "query head h uses KV head h // (H // KVH): repeat_interleave the KV "
                       "heads (or view q as [B, KVH, H // KVH, D]), not repeat"))
    return wrong


def _paged_cases():
    """(name, q, k_cache, v_cache, block_tables, seq_lens, tile). Random caches, so every
    slot past a sequence's length holds stale values; block tables are shuffled over the
    pool and padded with ids of other sequences' blocks."""
    g = torch.Generator().manual_seed(0)
    f64 = torch.float64

    def case(name, H, KVH, D, block_size, lens, tile, rising=False):
        width = max(-(-n // block_size) for n in lens) + 1        # one spare column
        num_blocks = len(lens) * width + 2
        order = torch.randperm(num_blocks, generator=g)
        tables = order[:len(lens) * width].view(len(lens), width).clone()
        k = torch.randn(num_blocks, block_size, KVH, D, generator=g, dtype=f64)
        v = torch.randn(num_blocks, block_size, KVH, D, generator=g, dtype=f64)
        q = torch.randn(len(lens), H, D, generator=g, dtype=f64)
        if rising:  # scores grow with the position, so every tile raises the running max
            q = q.abs() + 0.5
            for b, n in enumerate(lens):
                for p in range(n):
                    blk, off = tables[b, p // block_size], p % block_size
                    k[blk, off] = k[blk, off].abs() * (0.2 + 0.25 * p)
        return (name, q, k, v, tables, torch.tensor(lens), tile)

    return [
        case("GQA (6 query heads, 2 KV heads), lengths 5, 12, 9, tiles of 4", 6, 2, 8, 4,
             [5, 12, 9], 4),
        case("scores that rise along the sequence (the max grows in every tile)", 4, 2, 8, 4,
             [11, 16], 4, rising=True),
        case("a sequence of length 1 beside a longer one", 4, 4, 8, 4, [1, 7], 4),
        case("lengths on block and tile boundaries (16, 17, 32), blocks of 8, tiles of 16",
             4, 1, 16, 8, [16, 17, 32], 16),
        case("tiles of 6 that do not line up with blocks of 4", 6, 3, 4, 4, [13, 6, 2], 6),
    ]


def _diagnose_paged(fn, q, k_cache, v_cache, block_tables, seq_lens, scale, tile, where):
    """Run ``fn`` on one decode batch; raise LabCheckFailed with a hint unless it equals
    the reference; return its output."""
    before = (k_cache.clone(), v_cache.clone(), block_tables.clone(), seq_lens.clone())
    try:
        out = fn(q.clone(), k_cache, v_cache, block_tables, seq_lens, scale, tile)
    except LabCheckFailed:
        raise
    except IndexError as e:
        raise LabCheckFailed(
            f"{WHAT_PAGED} {where}: raised IndexError ({e}); positions past seq_len can "
            "point past the block table: only read positions < seq_len (or clamp the "
            "block index and mask those positions)") from None
    except Exception as e:
        raise LabCheckFailed(f"{WHAT_PAGED} {where}: raised {type(e).__name__}: {e}") from None
    if not all(torch.equal(a, b) for a, b in zip(before, (k_cache, v_cache, block_tables,
                                                           seq_lens))):
        raise LabCheckFailed(f"{WHAT_PAGED} {where}: your function changed the cache, the "
                             "block tables or seq_lens; a decode only reads them")
    if not isinstance(out, torch.Tensor) or out.shape != q.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LabCheckFailed(f"{WHAT_PAGED} {where}: returned {got}; expected a tensor "
                             f"shaped like q, {tuple(q.shape)} ([B, H, D])")
    out = out.to(q.dtype)
    expected = _naive_paged(q, k_cache, v_cache, block_tables, seq_lens, scale)
    tol = dict(rtol=1e-5, atol=1e-7) if q.dtype == torch.float64 else dict(rtol=1e-3, atol=1e-4)
    if torch.allclose(out, expected, **tol):
        return out
    if torch.isnan(out).any():
        raise LabCheckFailed(f"{WHAT_PAGED} {where}: NaN in the output; a fully masked tile "
                             "gives exp(-inf - (-inf)) = NaN: shift by 0 where the running "
                             "max is still -inf, or only visit tiles that hold a position "
                             "< seq_len")
    hint_text = next((text for ref, text in _wrong_paged_outputs(
        q, k_cache, v_cache, block_tables, seq_lens, scale, tile)
        if torch.allclose(out, ref, **tol)), None)
    if hint_text is None:
        bad = [b for b in range(q.shape[0]) if not torch.allclose(out[b], expected[b], **tol)]
        hint_text = (f"wrong output for sequence(s) {bad} (seq_lens "
                     f"{[int(seq_lens[b]) for b in bad]}); compare with softmax(q . k * scale) "
                     "@ v over that sequence's positions 0..seq_len-1")
    raise LabCheckFailed(f"{WHAT_PAGED} {where}: {hint_text}")


class PagedLabBackend(PagedTorchBackend):
    """The paged-torch backend, with its decode path replaced by ``paged_decode``.

    The engine has already stored this step's K/V by slot (``write_kv``) when
    ``forward`` runs; the decodes (the first ``meta.num_decodes`` sequences) go through
    the learner's function with the step's block tables and seq_lens, prefills through
    SDPA as in the package's backend. With ``check=True`` every call is compared with the
    reference and a wrong one raises LabCheckFailed with a hint.
    """

    name = "paged-lab"

    def __init__(self, paged_decode, tile: int = 8, check: bool = True):
        self.paged_decode, self.tile, self.check, self.calls = paged_decode, tile, check, 0

    def forward(self, q, k_cache, v_cache, meta, scale: float, k, v):
        out = torch.empty_like(q)
        nd = meta.num_decodes
        if nd:
            args = (q[:nd], k_cache, v_cache, meta.block_tables[:nd],
                    meta.seq_lens_tensor[:nd].long(), scale, self.tile)
            self.calls += 1
            if self.check:
                out[:nd] = _diagnose_paged(self.paged_decode, *args,
                                           f"(engine decode of {nd} sequences, seq_lens "
                                           f"{meta.seq_lens[:nd]})")
            else:
                out[:nd] = self.paged_decode(*args)
        sdpa_prefills(out, q, k_cache, v_cache, meta, scale, k, v)
        return out


def paged_lab_llm(model_dir, paged_decode, tile: int = 8, check: bool = True,
                  dtype: str = "float64", block_size: int = 4, max_model_len: int = 64,
                  num_kv_blocks: int = 64, max_num_seqs: int = 4):
    """An ``LLM`` on ``model_dir`` whose decode attention is ``paged_decode``: a paged KV
    cache with small blocks, and a ``PagedLabBackend`` put into the model with
    ``model.set_attention_backend`` (the call that switches any backend)."""
    from folo_edu import LLM

    llm = LLM(str(model_dir), dtype=dtype, skip_tokenizer_init=True, block_size=block_size,
              max_model_len=max_model_len, num_kv_blocks=num_kv_blocks,
              max_num_seqs=max_num_seqs, attention_backend="paged-torch", seed=0)
    llm.llm_engine.model_runner.model.set_attention_backend(
        PagedLabBackend(paged_decode, tile, check))
    return llm


def check_paged_decode(fn) -> bool:
    """Check ``fn(q [B, H, D], k_cache, v_cache [N, block_size, KVH, D], block_tables
    [B, W], seq_lens [B], scale, tile) -> [B, H, D]``: decode attention read through the
    block tables, tile by tile with an online softmax. First on synthetic cases against
    naive attention, then as the decode path of the engine (``PagedLabBackend``) on a
    tiny float64 Llama with blocks of 4 and tiles of 8: every call is checked and the
    greedy tokens must equal transformers'."""
    what = WHAT_PAGED
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    cases = _paged_cases()
    _, q, kc, vc, bt, lens, tile = cases[0]
    try:
        stub = fn(q, kc.clone(), vc.clone(), bt.clone(), lens.clone(), 0.5, tile) is None
    except Exception:
        stub = False  # _diagnose_paged reports it below
    if stub:
        return not_answered(what)
    for name, q, kc, vc, bt, lens, tile in cases:
        _diagnose_paged(fn, q, kc, vc, bt, lens, q.shape[-1] ** -0.5, tile, f"(case: {name})")

    from folo_edu.engine.llm_engine import EngineStepError
    from folo_edu.labs.m1_forward import _transformers_greedy
    from folo_edu.labs.m1_sampling import tiny_lab_model
    from folo_edu.sampling_params import SamplingParams

    model_dir, num_tokens = tiny_lab_model(), 12
    prompts = [[5], [9, 80, 3, 41], [17, 4, 200, 51, 6, 33, 90, 12, 7]]
    llm = paged_lab_llm(model_dir, fn)
    try:
        outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                            SamplingParams(temperature=0, max_tokens=num_tokens,
                                           ignore_eos=True), use_tqdm=False)
    except EngineStepError as e:  # the engine wraps what the backend raised
        if isinstance(e.__cause__, LabCheckFailed):
            raise e.__cause__ from None
        raise
    ours = [list(o.outputs[0].token_ids) for o in outs]
    calls = llm.llm_engine.model_runner.model.layers[0].self_attn.backend.calls
    if ours != _transformers_greedy(model_dir, prompts, num_tokens):
        raise LabCheckFailed(f"{what}: every decode call matched the reference, but the "
                             "engine's greedy tokens differ from transformers'; run the "
                             "cell again, and if it persists report it")
    return report_pass(f"{what} agrees with naive attention on {len(cases)} synthetic cases "
                       f"and {calls} decode steps in the engine (blocks of 4, tiles of 8), "
                       f"and the engine with it inside generated the same "
                       f"{sum(map(len, ours))} greedy tokens as transformers")


def time_paged_decode(fns: dict, contexts=(64, 256, 1024, 4096), batch: int = 8,
                      tile: int = 128, repeats: int = 5) -> dict:
    """Median milliseconds of each ``fn`` (same signature as paged_decode) on a synthetic
    float32 decode batch of ``batch`` sequences at each context length:
    {"context": [...], name: [ms, ...]}."""
    import statistics
    import time

    from folo_edu.viz.decode_attention import synthetic_decode_step

    result = {"context": list(contexts)}
    for c in contexts:
        step = synthetic_decode_step(batch, c, num_heads=8, num_kv_heads=2, head_dim=64,
                                     block_size=16)
        args = (step.q, step.k_cache, step.v_cache, step.meta.block_tables,
                step.meta.seq_lens_tensor.long(), step.scale, tile)
        for name, fn in fns.items():
            fn(*args)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(*args)
                times.append(time.perf_counter() - start)
            result.setdefault(name, []).append(1e3 * statistics.median(times))
    return result
