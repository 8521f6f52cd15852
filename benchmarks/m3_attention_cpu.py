"""Decode attention over a paged KV cache on the CPU: four ways to compute one step.

    .venv/bin/python benchmarks/m3_attention_cpu.py                 # writes the JSON
    .venv/bin/python benchmarks/m3_attention_cpu.py --no-flex       # skip FlexAttention

One decode step of B sequences (one query token each) with lengths drawn uniformly
from [min_len, max_len], SmolLM2-135M's attention shape (9 query heads, 3 KV heads,
head_dim 64), block size 16, float32. The cache blocks of the sequences are shuffled
over the pool, as they are after a while in a real engine. Methods:

    naive        folo_edu's NaiveBackend.forward: per sequence, gather K/V through
                 the block table, einsum, softmax, einsum
    sdpa         folo_edu's SdpaBackend.forward as it is: decodes sorted by length,
                 split into up to metadata.MAX_DECODE_GROUPS groups, each gathered into
                 a padded [b, group max_len] batch with a length mask, one SDPA per group
    sdpa_1group  the same backend with metadata built for ONE group: a single padded
                 [B, max_len] gather and ONE scaled_dot_product_attention call
    loop_sdpa    per sequence: gather its K/V (no padding), one SDPA call each
    flex_paged   torch FlexAttention, compiled, reading the cache in place: the keys are
                 the whole physical cache, and a block mask built from the block tables
                 lets sequence b see only its own blocks (block mask of 1 x 16)

All of them get the real AttentionMetadata.build of the step and real cache
tensors; their outputs are checked against naive. Timings: after warm-up, the
methods run interleaved (one call each, in rotating order) ``--repeats`` times; the
median wall time and process CPU time are reported. The load average is recorded
before and after. Writes benchmarks/results/m3_attention_cpu.json.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import traceback

# A fresh inductor cache, so the FlexAttention compile time is a cold one.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="folo_m3_inductor_"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import folo_edu.attention.metadata as metadata_module  # noqa: E402
from folo_edu.attention import AttentionMetadata  # noqa: E402
from folo_edu.attention.common import gather_kv  # noqa: E402
from folo_edu.attention.naive import NaiveBackend  # noqa: E402
from folo_edu.attention.sdpa import SdpaBackend  # noqa: E402
from folo_edu.bench.machine import load_average, machine_info, source_version  # noqa: E402
from folo_edu.bench.metrics import save_json, table, timestamp  # noqa: E402


def make_step(batch, min_len, max_len, num_heads, num_kv_heads, head_dim, block_size,
              dtype, seed, spare_blocks=16):
    """Random caches, shuffled block tables, and the real AttentionMetadata of one
    decode step in which every sequence adds its last token."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    # sorted shortest first, the order in which ModelRunner hands decodes to the backend
    lens = sorted(rng.randint(min_len, max_len) for _ in range(batch))
    nblocks = [-(-n // block_size) for n in lens]
    num_blocks = sum(nblocks) + spare_blocks
    ids = list(range(num_blocks))
    rng.shuffle(ids)
    tables, k = [], 0
    for n in nblocks:
        tables.append(ids[k:k + n])
        k += n
    width = max(nblocks)
    block_tables = torch.tensor([t + [0] * (width - len(t)) for t in tables])
    slots = torch.tensor([t[(n - 1) // block_size] * block_size + (n - 1) % block_size
                          for t, n in zip(tables, lens)])
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen, dtype=dtype)
    v_cache = torch.randn(shape, generator=gen, dtype=dtype)
    q = torch.randn(batch, num_heads, head_dim, generator=gen, dtype=dtype)
    # this step's new K/V are already in the cache at their slots (the model writes them
    # before calling the backend); the backends only read k/v for fresh prefills
    k_new = k_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    v_new = v_cache.view(-1, num_kv_heads, head_dim)[slots].clone()
    meta = AttentionMetadata.build([1] * batch, lens, slots, block_tables, block_size)
    meta_one = None
    if hasattr(metadata_module, "MAX_DECODE_GROUPS"):
        saved = metadata_module.MAX_DECODE_GROUPS
        metadata_module.MAX_DECODE_GROUPS = 1
        try:
            meta_one = AttentionMetadata.build([1] * batch, lens, slots, block_tables,
                                               block_size)
        finally:
            metadata_module.MAX_DECODE_GROUPS = saved
    return dict(lens=lens, tables=tables, k_cache=k_cache, v_cache=v_cache, q=q,
                k_new=k_new, v_new=v_new, meta=meta, meta_one_group=meta_one,
                scale=head_dim ** -0.5)


def loop_sdpa(q, k_cache, v_cache, meta, scale):
    """One SDPA call per sequence on its own gathered (unpadded) K/V."""
    out = torch.empty_like(q)
    for i in range(meta.num_seqs):
        keys = gather_kv(k_cache, meta.block_tables[i], meta.seq_lens[i])
        values = gather_kv(v_cache, meta.block_tables[i], meta.seq_lens[i])
        o = F.scaled_dot_product_attention(
            q[i:i + 1, :, None], keys.transpose(0, 1)[None],
            values.transpose(0, 1)[None], scale=scale, enable_gqa=True)
        out[i] = o[0, :, 0]
    return out


def flex_block_mask(step, block_size):
    """A FlexAttention BlockMask over the whole physical cache: query b may read
    physical slot s only if s's block belongs to b and its position is < len(b)."""
    from torch.nn.attention.flex_attention import create_block_mask

    num_blocks = step["k_cache"].shape[0]
    owner = torch.full((num_blocks,), -1, dtype=torch.long)
    logical = torch.zeros(num_blocks, dtype=torch.long)
    for b, table in enumerate(step["tables"]):
        owner[table] = b
        logical[table] = torch.arange(len(table))
    lens = torch.tensor(step["lens"])

    def mask_mod(b, h, q_idx, kv_idx):
        blk = kv_idx // block_size
        return (owner[blk] == b) & (logical[blk] * block_size + kv_idx % block_size < lens[b])

    return create_block_mask(mask_mod, len(lens), None, 1, num_blocks * block_size,
                             device="cpu", BLOCK_SIZE=(1, block_size))


def flex_inputs(step):
    kc, vc, q = step["k_cache"], step["v_cache"], step["q"]
    batch = q.shape[0]
    # [blocks, bs, KVH, D] -> [1, KVH, blocks*bs, D], broadcast (no copy) over the batch
    keys = kc.flatten(0, 1).permute(1, 0, 2)[None].expand(batch, -1, -1, -1)
    values = vc.flatten(0, 1).permute(1, 0, 2)[None].expand(batch, -1, -1, -1)
    return q[:, :, None, :], keys, values




def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--min-len", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--num-heads", type=int, default=9)
    ap.add_argument("--num-kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: steadier on a small shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-flex", action="store_true", help="skip FlexAttention")
    ap.add_argument("--no-flex-eager", action="store_true",
                    help="skip the one uncompiled FlexAttention call (it is slow)")
    ap.add_argument("--output", default="benchmarks/results/m3_attention_cpu.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = load_average()
    step = make_step(args.batch, args.min_len, args.max_len, args.num_heads,
                     args.num_kv_heads, args.head_dim, args.block_size, torch.float32,
                     args.seed)
    meta, q, scale = step["meta"], step["q"], step["scale"]
    kc, vc = step["k_cache"], step["v_cache"]
    naive, sdpa = NaiveBackend(), SdpaBackend()
    methods = {
        "naive": lambda: naive.forward(q, kc, vc, meta, scale, step["k_new"], step["v_new"]),
        "sdpa": lambda: sdpa.forward(q, kc, vc, meta, scale, step["k_new"], step["v_new"]),
        "loop_sdpa": lambda: loop_sdpa(q, kc, vc, meta, scale),
    }
    if step["meta_one_group"] is not None:
        one = step["meta_one_group"]
        methods["sdpa_1group"] = lambda: sdpa.forward(q, kc, vc, one, scale, step["k_new"],
                                                      step["v_new"])
    notes: dict[str, dict] = {}
    with torch.inference_mode():
        ref = methods["naive"]()
    if not args.no_flex:
        from torch.nn.attention.flex_attention import flex_attention

        fq, fk, fv = flex_inputs(step)
        info: dict = {"layout": "keys/values = the whole physical cache, broadcast over the "
                                "batch; BlockMask(1 x block_size) from the block tables"}
        try:
            mask, t_mask, _ = timed(lambda: flex_block_mask(step, args.block_size))
            info["block_mask_build_s_first"] = t_mask
            _, t_mask2, _ = timed(lambda: flex_block_mask(step, args.block_size))
            info["block_mask_build_s"] = t_mask2
            compiled = torch.compile(flex_attention)
            with torch.inference_mode():
                out, t_compile, _ = timed(lambda: compiled(fq, fk, fv, block_mask=mask,
                                                           scale=scale, enable_gqa=True))
            info["compile_and_first_call_s"] = t_compile
            info["max_abs_diff_vs_naive"] = float((out[:, :, 0] - ref).abs().max())
            methods["flex_paged"] = lambda: compiled(fq, fk, fv, block_mask=mask, scale=scale,
                                                     enable_gqa=True)[:, :, 0]
            # The next engine step has another batch size: one sequence fewer, same cache.
            fewer = dict(step, tables=step["tables"][:-1], lens=step["lens"][:-1],
                         q=step["q"][:-1])
            mask2 = flex_block_mask(fewer, args.block_size)
            fq2, fk2, fv2 = flex_inputs(fewer)
            with torch.inference_mode():
                out2, t_second, _ = timed(lambda: compiled(fq2, fk2, fv2, block_mask=mask2,
                                                           scale=scale, enable_gqa=True))
                _, t_third, _ = timed(lambda: compiled(fq2, fk2, fv2, block_mask=mask2,
                                                       scale=scale, enable_gqa=True))
            # and a third batch size: does torch.compile now treat the batch as dynamic?
            fewer3 = dict(step, tables=step["tables"][:-2], lens=step["lens"][:-2],
                          q=step["q"][:-2])
            mask3 = flex_block_mask(fewer3, args.block_size)
            fq3, fk3, fv3 = flex_inputs(fewer3)
            with torch.inference_mode():
                _, t_third_size, _ = timed(lambda: compiled(fq3, fk3, fv3, block_mask=mask3,
                                                            scale=scale, enable_gqa=True))
            info["third_batch_size_first_call_s"] = t_third_size
            info["next_batch_size_first_call_s"] = t_second
            info["next_batch_size_second_call_s"] = t_third
            info["next_batch_size_max_abs_diff"] = float((out2[:, :, 0] - ref[:-1]).abs().max())
        except Exception as e:  # noqa: BLE001
            info["error"] = f"{type(e).__name__}: {str(e)[:2000]}"
            info["traceback_tail"] = traceback.format_exc()[-1500:]
        if not args.no_flex_eager and "error" not in info:
            try:
                with torch.inference_mode():
                    out, t_eager, c_eager = timed(lambda: flex_attention(
                        fq, fk, fv, block_mask=mask, scale=scale, enable_gqa=True))
                info["eager_one_call_s"] = t_eager
                info["eager_one_call_cpu_s"] = c_eager
                info["eager_max_abs_diff_vs_naive"] = float((out[:, :, 0] - ref).abs().max())
            except Exception as e:  # noqa: BLE001
                info["eager_error"] = f"{type(e).__name__}: {str(e)[:1000]}"
        notes["flex"] = info

    runs = {name: {"wall": [], "cpu": []} for name in methods}
    names = list(methods)
    with torch.inference_mode():
        for name, fn in methods.items():  # warm-up, and the agreement check
            out = fn()
            diff = float((out - ref).abs().max())
            assert diff < 1e-4, f"{name} differs from naive by {diff}"
            notes.setdefault(name, {})["max_abs_diff_vs_naive"] = diff
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                _, wall, cpu = timed(methods[name])
                runs[name]["wall"].append(wall)
                runs[name]["cpu"].append(cpu)
    lens = step["lens"]
    elem = 4 * args.num_kv_heads * args.head_dim * 2  # K and V bytes per token, fp32
    results = {}
    for name, r in runs.items():
        results[name] = {"median_ms": 1e3 * statistics.median(r["wall"]),
                         "min_ms": 1e3 * min(r["wall"]),
                         "median_cpu_ms": 1e3 * statistics.median(r["cpu"]),
                         "wall_ms_runs": [1e3 * x for x in r["wall"]],
                         **notes.get(name, {})}
    # K and V bytes each method copies out of the cache before attending (a count, not
    # a timing): per-sequence gathers copy each sequence once, padded gathers copy
    # every row up to its group's longest sequence, FlexAttention reads in place.
    copied = {"naive": sum(lens), "loop_sdpa": sum(lens),
              "sdpa": sum((g.end - g.start) * g.max_len
                          for g in getattr(meta, "decode_groups", [])),
              "flex_paged": 0}
    if step["meta_one_group"] is not None:
        copied["sdpa_1group"] = sum((g.end - g.start) * g.max_len
                                    for g in step["meta_one_group"].decode_groups)
    for name, r in results.items():
        if name in copied and (copied[name] or name in ("flex_paged",)):
            r["kv_bytes_copied"] = copied[name] * elem
    base = results["naive"]["median_ms"]
    for r in results.values():
        r["speedup_vs_naive"] = base / r["median_ms"]
    data = {
        "benchmark": "m3_attention_cpu",
        "what": "one decode step of attention over a paged KV cache (one query per sequence)",
        "timestamp": timestamp(),
        "machine": machine_info(torch.device("cpu")),
        "source": source_version(),
        "load_average_before": load_before, "load_average_after": load_average(),
        "shared_machine_note": "the machine was shared with other jobs; compare methods "
                               "within this file only",
        "config": {"batch": args.batch, "seq_len_uniform": [args.min_len, args.max_len],
                   "num_heads": args.num_heads, "num_kv_heads": args.num_kv_heads,
                   "head_dim": args.head_dim, "block_size": args.block_size,
                   "dtype": "float32", "threads": args.threads, "repeats": args.repeats,
                   "seed": args.seed, "timing": "interleaved, rotating order, after one "
                                                "warm-up call each; median of repeats"},
        "batch_stats": {"sum_len": sum(lens), "max_len": max(lens),
                        "padded_slots": len(lens) * max(lens),
                        "padding_share": 1 - sum(lens) / (len(lens) * max(lens)),
                        "kv_bytes_needed": sum(lens) * elem,
                        "kv_bytes_padded_gather": len(lens) * max(lens) * elem},
        "results": results,
        "flex": notes.get("flex", "skipped (--no-flex)"),
    }
    rows = [[n, r["median_ms"], r["median_cpu_ms"], r["speedup_vs_naive"]]
            for n, r in results.items()]
    print(table(["method", "median ms", "median CPU ms", "x naive"], rows))
    if "flex" in notes:
        print({k: v for k, v in notes["flex"].items() if k != "traceback_tail"})
    print(f"load average before {load_before}, after {data['load_average_after']}")
    if args.output != "-":
        print("wrote", save_json(args.output, data))
    return data


if __name__ == "__main__":
    sys.exit(main() and 0)
