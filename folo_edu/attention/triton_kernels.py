"""Triton kernels for the paged KV cache: ``store_kv`` and ``paged_decode_attention``.

``paged_decode_attention`` runs the same algorithm as ``paged_torch.paged_decode_torch``
(tiles of key positions, slots looked up through the block table, online softmax), but
as one GPU program per (sequence, query head) instead of a Python loop over tiles.

Where the kernels run:

* CUDA machine: Triton compiles them to GPU code ("compiled").
* CPU-only machine: Triton's interpreter runs each program instance in Python with
  numpy ("interpreter"). Slow, but the same kernel source, so it can be read, stepped
  through and tested without a GPU.
* No importable triton: ``TRITON_AVAILABLE`` is False, ``TRITON_UNAVAILABLE_REASON`` says
  why, and calling a kernel raises RuntimeError with that reason. Importing this module
  never raises, so the rest of the package can always import it.
"""
from __future__ import annotations

import os

import torch

# Triton reads TRITON_INTERPRET whenever something is decorated with @triton.jit: our
# kernels below, but also the helpers of its own standard library (tl.sum, tl.max, ...),
# which are decorated while `import triton` runs. So the variable must be set before
# triton is first imported in this process. On a machine without CUDA the interpreter is
# the only way to run a Triton kernel: `import folo_edu` (folo_edu/__init__.py), which
# runs before this module can, turns it on there unless the user chose otherwise.

TRITON_AVAILABLE = False
TRITON_UNAVAILABLE_REASON: str | None = None
_INTERPRETED = False

try:
    import triton
    import triton.language as tl
    from triton.runtime.jit import JITFunction
except Exception as e:  # ImportError, or a broken install: report it, never raise here
    TRITON_UNAVAILABLE_REASON = f"triton cannot be imported ({type(e).__name__}: {e})"


if TRITON_UNAVAILABLE_REASON is None:

    @triton.jit
    def _store_kv_kernel(k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                         stride_kt, stride_kh, stride_kd, stride_vt, stride_vh, stride_vd,
                         stride_slot, head_dim, row_size, BLOCK: tl.constexpr):
        """One program per token t: copy its KVH*D values of K and V to its cache slot."""
        t = tl.program_id(0).to(tl.int64)
        slot = tl.load(slot_ptr + t).to(tl.int64)
        e = tl.arange(0, BLOCK)  # element index inside the [KVH, D] row, padded to pow2
        # slot -1 is a padding token: every load and store is masked off, so nothing is
        # read or written (a mask needs no early `return`, which older Triton lacks).
        mask = (e < row_size) & (slot >= 0)
        head, d = e // head_dim, e % head_dim
        dst = slot * stride_slot + e  # the cache is contiguous: a slot's row is contiguous
        k = tl.load(k_ptr + t * stride_kt + head * stride_kh + d * stride_kd, mask=mask)
        tl.store(k_cache_ptr + dst, k, mask=mask)
        v = tl.load(v_ptr + t * stride_vt + head * stride_vh + d * stride_vd, mask=mask)
        tl.store(v_cache_ptr + dst, v, mask=mask)

    @triton.jit
    def _paged_decode_kernel(q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
                             out_ptr, scale: tl.float64,
                             stride_qb, stride_qh, stride_qd, stride_ob, stride_oh,
                             stride_btb, stride_btw, stride_sl, stride_slot, stride_head,
                             block_size, group, head_dim,
                             BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
        """One program per (sequence b, query head h): attention of q[b, h] over its keys.

        Per query head, not per KV head: the heads of a GQA group each read the same K/V
        tiles (mostly from the GPU's L2 cache), but a program stays a 1-D dot product per
        key, with no [group, BLOCK_N, BLOCK_D] tiles and no tl.dot (which wants >= 16 rows).
        """
        b = tl.program_id(0)
        h = tl.program_id(1)
        kv_h = h // group  # grouped-query attention: `group` query heads share a KV head
        d = tl.arange(0, BLOCK_D)
        d_ok = d < head_dim  # BLOCK_D is head_dim rounded up to a power of 2
        q = tl.load(q_ptr + b * stride_qb + h * stride_qh + d * stride_qd, mask=d_ok, other=0.0)
        # Fold the scale into q once rather than into every score. scale arrives as
        # float64 (so float64 inputs keep full precision); cast the product back to ACC.
        q = (q.to(ACC) * scale).to(ACC)

        # The loop bound is read here, on the device, so the launch grid depends only on
        # (B, H): the same launch works for any lengths, which lets a CUDA graph capture it.
        seq_len = tl.load(seq_lens_ptr + b * stride_sl)
        m_i = tl.full([], float("-inf"), ACC)  # running max of the scores
        l_i = tl.full([], 0.0, ACC)            # running sum of exp(score - m_i)
        acc = tl.zeros([BLOCK_D], ACC)         # running sum of exp(score - m_i) * v
        for start in range(0, seq_len, BLOCK_N):
            pos = start + tl.arange(0, BLOCK_N)  # key positions of this tile
            pos_ok = pos < seq_len
            # position -> physical slot, through the block table (any block_size works)
            block = tl.load(block_tables_ptr + b * stride_btb + (pos // block_size) * stride_btw,
                            mask=pos_ok, other=0)
            slot = block.to(tl.int64) * block_size + pos % block_size
            offs = slot[:, None] * stride_slot + kv_h * stride_head + d[None, :]
            kv_ok = pos_ok[:, None] & d_ok[None, :]
            k = tl.load(k_cache_ptr + offs, mask=kv_ok, other=0.0).to(ACC)  # [BLOCK_N, BLOCK_D]
            scores = tl.sum(k * q[None, :], axis=1)
            scores = tl.where(pos_ok, scores, float("-inf"))
            # Online softmax. Every tile holds at least one real key (start < seq_len), so
            # m_new is finite and exp(-inf - m_new) = 0 handles both masked keys and the
            # first tile (m_i = -inf): no inf - inf, no NaN.
            m_new = tl.maximum(m_i, tl.max(scores, axis=0))
            alpha = tl.exp(m_i - m_new)  # rescales what was summed under the old max
            p = tl.exp(scores - m_new)
            v = tl.load(v_cache_ptr + offs, mask=kv_ok, other=0.0).to(ACC)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            m_i = m_new
        # seq_len 0 (a padding row): the loop never ran, acc is 0 and l_i is 0; divide by 1
        # so the row is zeros instead of 0/0 = NaN.
        out = acc / tl.where(l_i > 0, l_i, 1.0)
        tl.store(out_ptr + b * stride_ob + h * stride_oh + d,
                 out.to(out_ptr.dtype.element_ty), mask=d_ok)

    _INTERPRETED = not isinstance(_store_kv_kernel, JITFunction)
    if _INTERPRETED and isinstance(tl.sum, JITFunction):
        # triton was imported before TRITON_INTERPRET was set: our kernels are interpreted
        # but tl.sum & co. were built for the compiler, and fail inside the interpreter.
        TRITON_UNAVAILABLE_REASON = (
            "triton was imported before TRITON_INTERPRET=1 was set, so its library "
            "functions cannot run in the interpreter; set TRITON_INTERPRET=1 in the "
            "environment or import folo_edu first")
    elif not _INTERPRETED and not torch.cuda.is_available():
        TRITON_UNAVAILABLE_REASON = (
            f"no CUDA GPU and TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')!r}: "
            "compiled Triton kernels need a GPU; unset it or set TRITON_INTERPRET=1")

TRITON_AVAILABLE = TRITON_UNAVAILABLE_REASON is None

BLOCK_N = 32  # key positions per tile; independent of the cache's block_size


def triton_mode() -> str:
    """How the kernels run here: "compiled" (GPU), "interpreter" (CPU) or "unavailable"."""
    if not TRITON_AVAILABLE:
        return "unavailable"
    return "interpreter" if _INTERPRETED else "compiled"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check_common(k_cache, v_cache, tensors: dict) -> None:
    """Checks shared by both kernels; metadata only, so no GPU sync."""
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"Triton kernels unavailable: {TRITON_UNAVAILABLE_REASON}")
    _check(k_cache.dim() == 4, f"k_cache must be 4-D [num_blocks, block_size, KVH, D], "
                               f"got shape {tuple(k_cache.shape)}")
    _check(v_cache.shape == k_cache.shape, f"v_cache shape {tuple(v_cache.shape)} != "
                                           f"k_cache shape {tuple(k_cache.shape)}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        # the kernels compute flat slot offsets, which assumes the standard layout
        _check(cache.is_contiguous(), f"{name} must be contiguous")
    _check(v_cache.dtype == k_cache.dtype, f"v_cache dtype {v_cache.dtype} != {k_cache.dtype}")
    device = k_cache.device
    for name, t in tensors.items():
        _check(t.device == device, f"{name} is on {t.device} but k_cache is on {device}")
    _check(_INTERPRETED or device.type == "cuda",
           f"k_cache is on {device}: compiled Triton kernels need CUDA tensors")


def _check_int(name: str, t: torch.Tensor, dims: int) -> None:
    _check(t.dim() == dims, f"{name} must be {dims}-D, got shape {tuple(t.shape)}")
    _check(not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool,
           f"{name} must be an integer tensor, got {t.dtype}")


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write K and V [T, KVH, D] of this step's tokens to their slots in the caches.

    Caches are [num_blocks, block_size, KVH, D]; token t goes to flat slot
    slot_mapping[t] = block_id * block_size + offset, and a slot of -1 is skipped.
    k and v may be strided views (e.g. slices of a fused qkv projection): the kernel
    takes their strides, which saves the copy a .contiguous() would make.
    """
    _check_common(k_cache, v_cache, {"k": k, "v": v, "slot_mapping": slot_mapping})
    _check(k.dim() == 3, f"k must be 3-D [T, KVH, D], got shape {tuple(k.shape)}")
    _check(v.shape == k.shape, f"v shape {tuple(v.shape)} != k shape {tuple(k.shape)}")
    T, kv_heads, head_dim = k.shape
    _check(k_cache.shape[2:] == k.shape[1:], f"k_cache is [.., .., KVH, D] = "
           f"{tuple(k_cache.shape)}, which does not match k [T, KVH, D] = {tuple(k.shape)}")
    _check(k.dtype == v.dtype == k_cache.dtype,
           f"k, v and k_cache dtypes differ: {k.dtype}, {v.dtype}, {k_cache.dtype}")
    _check_int("slot_mapping", slot_mapping, 1)
    _check(slot_mapping.shape[0] == T, f"slot_mapping has {slot_mapping.shape[0]} entries "
                                       f"but k has {T} tokens")
    _check(slot_mapping.is_contiguous(), "slot_mapping must be contiguous")
    if T == 0:
        return
    row_size = kv_heads * head_dim
    _store_kv_kernel[(T,)](k, v, k_cache, v_cache, slot_mapping, *k.stride(), *v.stride(),
                           k_cache.stride(1), head_dim, row_size,
                           BLOCK=triton.next_power_of_2(row_size))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           block_tables: torch.Tensor, seq_lens: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """Decode attention over the paged cache: q [B, H, D] -> out [B, H, D] (q's dtype).

    block_tables [B, W] holds each sequence's physical block ids; seq_lens [B] its number
    of keys (this step's token included: store_kv ran first). A row with seq_len 0 is
    padding and gets zeros. seq_lens must not exceed W * block_size (not checked here:
    that would need the values on the host, i.e. a GPU sync).
    Scores and softmax are computed in float32, or in float64 for float64 inputs.
    """
    _check_common(k_cache, v_cache, {"q": q, "block_tables": block_tables,
                                     "seq_lens": seq_lens})
    _check(q.dim() == 3, f"q must be 3-D [B, H, D], got shape {tuple(q.shape)}")
    B, num_heads, head_dim = q.shape
    kv_heads = k_cache.shape[2]
    _check(k_cache.shape[3] == head_dim,
           f"q head_dim {head_dim} != k_cache head_dim {k_cache.shape[3]}")
    _check(num_heads % kv_heads == 0,
           f"q has {num_heads} heads, not a multiple of k_cache's {kv_heads} KV heads")
    _check(q.dtype == k_cache.dtype, f"q dtype {q.dtype} != k_cache dtype {k_cache.dtype}")
    _check_int("block_tables", block_tables, 2)
    _check_int("seq_lens", seq_lens, 1)
    _check(block_tables.shape[0] == B, f"block_tables has {block_tables.shape[0]} rows, q {B}")
    _check(seq_lens.shape[0] == B, f"seq_lens has {seq_lens.shape[0]} entries, q has {B}")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous
    if B == 0:
        return out
    acc = tl.float64 if q.dtype == torch.float64 else tl.float32
    _paged_decode_kernel[(B, num_heads)](
        q, k_cache, v_cache, block_tables, seq_lens, out, float(scale),
        *q.stride(), out.stride(0), out.stride(1), *block_tables.stride(), seq_lens.stride(0),
        k_cache.stride(1), k_cache.stride(2), k_cache.shape[1], num_heads // kv_heads, head_dim,
        BLOCK_N=BLOCK_N, BLOCK_D=triton.next_power_of_2(head_dim), ACC=acc)
    return out
