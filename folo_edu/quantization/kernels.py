"""Fast GPTQ matmuls: y = x @ W.T without materialising W in full precision.

The reference path (``packing.dequantize_gptq`` then ``F.linear``) rebuilds the whole
[out, in] weight on every call. The fast paths here read the packed integers instead:

* ``"int4-cpu"``: torch's own CPU int4 kernel (``aten._weight_int4pack_mm_for_cpu``, the
  "tinygemm" kernel of ATen's ``native/cpu/int4mm_kernel.cpp``). ``prepare_int4_cpu``
  repacks the GPTQ tensors once at load; ``int4_cpu_matmul`` runs it per call.
* ``"triton"``: a Triton dequant-matmul kernel, ``triton_gptq_matmul``, that reads the
  GPTQ tensors as they are (2, 3, 4 or 8 bits, any g_idx). Compiled on CUDA; on a CPU-only
  machine it runs in Triton's interpreter (slow: for tests and for reading).
* ``"reference"``: everything else. ``select_kernel`` says which one applies, and why.

The GPTQ layout (see ``packing.py``): W[o, i] = scales[g, o] * (q[i, o] - zero[g, o]),
g = g_idx[i], q packed in ``qweight`` along the input dimension, zero - 1 packed in
``qzeros`` along the output dimension.

torch's int4 CPU op, as measured on torch 2.13 (and read in its source):
  packed = aten._convert_weight_to_int4pack_for_cpu(q_nk, innerKTiles)
      q_nk int32 [N, K] with values 0..15 -> uint8 [N, K/2]; N must be a multiple of 16;
      innerKTiles is ignored on CPU. The byte layout depends on the CPU's SIMD level
      (AVX512 / AVX2 / other), so a packed tensor is for this process only: never saved.
  y = aten._weight_int4pack_mm_for_cpu(x, packed, group_size, scales_and_zeros)
      x [M, K] (float32, float16 or bfloat16), scales_and_zeros [K / group_size, N, 2] in
      x's dtype, group_size in {32, 64, 128, 256} dividing K; y [M, N] in x's dtype:
          y[m, n] = sum_k x[m, k] * ((q[n, k] - 8) * s[k // gs, n, 0] + s[k // gs, n, 1])
      i.e. the int4 value is read as signed (q - 8) and the "zero" is a float offset.
  On x86 only the bfloat16 kernel is vectorised (AVX2 / AVX512); float32 and float16 take
  a scalar loop that is ~40x slower than F.linear, so the fast path computes in bfloat16.

From GPTQ's integer zero z to torch's float offset:
    s * (q - z) = s * (q - 8) + s * (8 - z)      ->  scales_and_zeros = [s, s * (8 - z)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from folo_edu.quantization.packing import unpack

INT4_CPU_GROUP_SIZES = (256, 128, 64, 32)  # what torch's CPU int4 op accepts
INT4_CPU_N_MULTIPLE = 16                    # out_features must be a multiple of this
TRITON_BITS = (2, 3, 4, 8)


def _int4_cpu_ops_reason() -> str | None:
    """None if torch's CPU int4 ops exist in this build, else why not."""
    for name in ("_convert_weight_to_int4pack_for_cpu", "_weight_int4pack_mm_for_cpu"):
        if not hasattr(torch.ops.aten, name):
            return f"this torch ({torch.__version__}) has no aten.{name}"
    return None


# ---- 1. the CPU int4 fast path ----------------------------------------------------------
@dataclass
class Int4CpuState:
    """A GPTQ layer repacked for ``aten._weight_int4pack_mm_for_cpu``.

    ``src`` maps each column of the kernel's input to a column of x (act-order permutation
    and padding; value ``in_features`` means "a zero column"), None when x is used as is.
    """
    packed: torch.Tensor            # uint8 [out, k_padded / 2], this CPU's layout
    scales_and_zeros: torch.Tensor  # [k_padded / op_group_size, out, 2] in compute_dtype
    op_group_size: int
    src: torch.Tensor | None        # int64 [k_padded] or None
    in_features: int
    out_features: int
    compute_dtype: torch.dtype

    def nbytes(self) -> int:
        """Bytes this layer holds in memory."""
        n = self.packed.nbytes + self.scales_and_zeros.nbytes
        return n + (self.src.nbytes if self.src is not None else 0)


def prepare_int4_cpu(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor,
                     g_idx: torch.Tensor, group_size: int | None = None,
                     compute_dtype: torch.dtype = torch.bfloat16) -> Int4CpuState:
    """Repack one 4-bit GPTQ layer for the CPU int4 op (once, at load).

    Any g_idx is accepted. The input features are sorted by group (a stable sort, so an
    already sorted g_idx keeps its order and needs no gather per call); each group's run
    is padded with zero columns to a multiple of the op's group size, which is the largest
    of 256/128/64/32 dividing every group's length (padding only when none does). So
    act-order, per-channel (group_size -1) and group sizes the op lacks (e.g. 192, or a
    GPTQ group of 576 = the whole row) all work; ``group_size`` is only checked against
    g_idx when given. ``compute_dtype`` bfloat16 is the fast one on x86; float32 gives the
    exact same result as the reference up to rounding but runs a scalar loop there.
    """
    reason = _int4_cpu_ops_reason()
    if reason:
        raise RuntimeError(reason)
    if compute_dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"compute_dtype {compute_dtype}: expected bfloat16, float16 or float32")
    q = unpack(qweight, 4, dim=0)                       # [in, out] int64 in 0..15
    zeros = unpack(qzeros, 4, dim=1) + 1                # [groups, out]
    K, N = q.shape
    if N % INT4_CPU_N_MULTIPLE:
        raise ValueError(f"out_features {N}: the CPU int4 op needs a multiple of "
                         f"{INT4_CPU_N_MULTIPLE}")
    if g_idx.shape != (K,):
        raise ValueError(f"g_idx shape {tuple(g_idx.shape)}: expected ({K},)")
    g = g_idx.long()
    if group_size is not None and group_size != -1 and not torch.equal(
            torch.sort(g).values, torch.arange(K) // group_size):
        # act-order permutes the features, but each group still holds group_size of them
        raise ValueError(f"g_idx does not hold {group_size} features per group")
    G = scales.shape[0]
    perm = torch.sort(g, stable=True).indices           # features of group 0, then 1, ...
    counts = torch.bincount(g, minlength=G).tolist()
    nonempty = [c for c in counts if c]
    op_gs = next((s for s in INT4_CPU_GROUP_SIZES if all(c % s == 0 for c in nonempty)), 32)

    # The kernel's input columns: each group's features, then zero columns up to op_gs.
    src_parts, group_of_block, start = [], [], 0
    for grp, c in enumerate(counts):
        if c == 0:
            continue
        padded = math.ceil(c / op_gs) * op_gs
        src_parts.append(perm[start:start + c])
        src_parts.append(torch.full((padded - c,), K, dtype=torch.long))  # K = zero column
        group_of_block += [grp] * (padded // op_gs)
        start += c
    src = torch.cat(src_parts)
    if torch.equal(src, torch.arange(K)):
        src = None                                       # plain order, no padding

    # Weights in kernel order: a zero column's weight is anything (x is 0 there); use 8.
    q_ext = torch.cat([q, torch.full((1, N), 8, dtype=q.dtype)])          # [K + 1, out]
    q_nk = q if src is None else q_ext[src]                               # [k_padded, out]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
        q_nk.t().contiguous().to(torch.int32), 1)
    blocks = torch.tensor(group_of_block, dtype=torch.long)
    s = scales.float()[blocks]                                             # [blocks, out]
    offset = s * (8 - zeros[blocks].float())  # s*(q - z) = s*(q - 8) + s*(8 - z)
    sz = torch.stack([s, offset], dim=-1).to(compute_dtype).contiguous()
    return Int4CpuState(packed, sz, op_gs, src, K, N, compute_dtype)


def int4_cpu_matmul(x: torch.Tensor, state: Int4CpuState) -> torch.Tensor:
    """x [..., in] (any float dtype) -> x @ W.T [..., out] in x's dtype (no bias).

    x is cast to ``state.compute_dtype`` (bfloat16 by default: x loses bits there, and so
    did the scales at load), the product accumulates in float32 inside the kernel, and
    the result is rounded to the compute dtype, then cast back to x's dtype.
    """
    if x.shape[-1] != state.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the layer {state.in_features}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, state.in_features).to(state.compute_dtype)
    if state.src is not None:
        x2 = torch.nn.functional.pad(x2, (0, 1)).index_select(1, state.src)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x2.contiguous(), state.packed, state.op_group_size, state.scales_and_zeros)
    return y.to(x.dtype).reshape(*lead, state.out_features)


# ---- 2. the Triton dequant-matmul --------------------------------------------------------
from folo_edu.attention.triton_kernels import (  # noqa: E402
    TRITON_AVAILABLE, TRITON_UNAVAILABLE_REASON, triton_mode)

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

    @triton.jit
    def _unpack_bits(words_ptr, word_idx, off, extra_mask, n_words,
                     BITS: tl.constexpr, STRADDLE: tl.constexpr):
        """The BITS-bit value that starts at bit ``off`` of word ``word_idx`` (tensors).

        ``words_ptr + word_idx`` must already include the other dimension's offset. For
        3 bits (STRADDLE) a value may continue into the next word's low bits."""
        mask = extra_mask
        w0 = tl.load(words_ptr + word_idx, mask=mask, other=0).to(tl.uint32, bitcast=True)
        v = w0 >> off.to(tl.uint32)
        if STRADDLE:
            spill = (off + BITS > 32) & mask
            w1 = tl.load(words_ptr + word_idx + n_words, mask=spill, other=0)
            w1 = w1.to(tl.uint32, bitcast=True)
            # shift by 32 - off only where it spills (off >= 30), never by 32
            sh = tl.where(spill, 32 - off, 0).to(tl.uint32)
            v = v | tl.where(spill, w1 << sh, 0)
        return (v & ((1 << BITS) - 1)).to(tl.int32)

    @triton.jit
    def _gptq_matmul_kernel(x_ptr, qw_ptr, qz_ptr, s_ptr, g_ptr, y_ptr, M, N, K,
                            stride_xm, stride_xk, stride_qwk, stride_qwn, stride_qzg,
                            stride_qzn, stride_sg, stride_sn, stride_ym, stride_yn,
                            BITS: tl.constexpr, STRADDLE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                            BLOCK_K: tl.constexpr, DOT_DTYPE: tl.constexpr,
                            PRECISION: tl.constexpr):
        """One program per [BLOCK_M, BLOCK_N] tile of y; a loop over K in BLOCK_K steps
        unpacks a [BLOCK_K, BLOCK_N] tile of W.T, dequantizes it, and accumulates x @ W.T
        in float32."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        m_ok = offs_m < M
        n_ok = offs_n < N
        # zero point word and bit offset of each output column (packed along out)
        zbit = offs_n * BITS
        zword = zbit // 32
        zoff = zbit % 32
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                        mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            # q[k, n]: bits k*BITS .. of column n's stream (packed along in)
            qbit = offs_k * BITS
            kk_mask = k_ok[:, None] & n_ok[None, :]
            q = _unpack_bits(qw_ptr + offs_n[None, :] * stride_qwn,
                             (qbit // 32)[:, None] * stride_qwk, (qbit % 32)[:, None],
                             kk_mask, stride_qwk, BITS, STRADDLE)
            g = tl.load(g_ptr + offs_k, mask=k_ok, other=0)
            z = _unpack_bits(qz_ptr + g[:, None] * stride_qzg,
                             zword[None, :] * stride_qzn, zoff[None, :],
                             kk_mask, stride_qzn, BITS, STRADDLE) + 1
            s = tl.load(s_ptr + g[:, None] * stride_sg + offs_n[None, :] * stride_sn,
                        mask=kk_mask, other=0.0).to(tl.float32)
            w = ((q - z).to(tl.float32) * s).to(DOT_DTYPE)   # [BLOCK_K, BLOCK_N] = W.T
            acc = tl.dot(x.to(DOT_DTYPE), w, acc, input_precision=PRECISION)
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn,
                 acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


def triton_gptq_matmul(x: torch.Tensor, qweight: torch.Tensor, qzeros: torch.Tensor,
                       scales: torch.Tensor, g_idx: torch.Tensor, bits: int,
                       group_size: int | None = None, *, block_m: int | None = None,
                       block_n: int = 64, block_k: int = 32) -> torch.Tensor:
    """x [..., in] @ W.T -> [..., out] in x's dtype, W dequantized tile by tile on the fly.

    x float32, float16 or bfloat16 (not float64: tl.dot has none). The products run in
    x's dtype (float32: "ieee" precision, no TF32), accumulating in float32. ``g_idx``
    may be in any order (act-order); ``group_size`` is not needed (g_idx says it all) and
    is only checked against the scales' row count when given. Bits 2, 3, 4, 8.
    """
    if not TRITON_AVAILABLE:
        raise RuntimeError(f"Triton kernels unavailable: {TRITON_UNAVAILABLE_REASON}")
    if bits not in TRITON_BITS:
        raise ValueError(f"bits {bits}: the Triton kernel supports {TRITON_BITS}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"x dtype {x.dtype}: expected float32, float16 or bfloat16")
    K = x.shape[-1]
    N = scales.shape[1]
    if qweight.shape != (K * bits // 32, N) or K * bits % 32:
        raise ValueError(f"qweight shape {tuple(qweight.shape)}: expected ({K * bits / 32:g}, {N})"
                         f" for {K} input features at {bits} bits")
    if qzeros.shape != (scales.shape[0], N * bits // 32) or N * bits % 32:
        raise ValueError(f"qzeros shape {tuple(qzeros.shape)}: expected "
                         f"({scales.shape[0]}, {N * bits / 32:g})")
    if g_idx.shape != (K,):
        raise ValueError(f"g_idx shape {tuple(g_idx.shape)}: expected ({K},)")
    if group_size not in (None, -1) and scales.shape[0] != math.ceil(K / group_size):
        raise ValueError(f"scales has {scales.shape[0]} groups; group_size {group_size} "
                         f"over {K} features needs {math.ceil(K / group_size)}")
    tensors = {"qweight": qweight, "qzeros": qzeros, "scales": scales, "g_idx": g_idx}
    for name, t in tensors.items():
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, x on {x.device}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    M = x2.shape[0]
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if block_m is None:  # tl.dot wants >= 16 rows; decode (M = 1) pads to 16 with masks
        block_m = 16 if M <= 16 else (32 if M <= 32 else 64)
    dot_dtype = {torch.float32: tl.float32, torch.float16: tl.float16,
                 torch.bfloat16: tl.bfloat16}[x.dtype]
    if x.dtype == torch.bfloat16 and triton_mode() == "interpreter":
        # Triton 3.8's interpreter returns garbage for tl.dot on bfloat16 operands (it
        # holds bfloat16 as raw 16-bit integers); the products run in float32 there.
        dot_dtype = tl.float32
    grid = (triton.cdiv(M, block_m), triton.cdiv(N, block_n))
    _gptq_matmul_kernel[grid](
        x2, qweight, qzeros, scales, g_idx, y, M, N, K,
        x2.stride(0), x2.stride(1), qweight.stride(0), qweight.stride(1),
        qzeros.stride(0), qzeros.stride(1), scales.stride(0), scales.stride(1),
        y.stride(0), y.stride(1),
        BITS=bits, STRADDLE=(32 % bits != 0), BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_K=block_k, DOT_DTYPE=dot_dtype, PRECISION="ieee")
    return y.reshape(*lead, N)


# ---- 3. which one -------------------------------------------------------------------------
class KernelChoice(NamedTuple):
    """``name`` is "int4-cpu", "triton" or "reference"; ``reason`` says why."""
    name: str
    reason: str


def select_kernel(device, bits: int, group_size: int, desc_act: bool,
                  out_features: int | None = None,
                  dtype: torch.dtype | None = None) -> KernelChoice:
    """The fastest path that supports this layer here, and why.

    ``desc_act`` never forces the reference: both fast paths take any g_idx (the CPU one
    permutes x's features once per call, the Triton one gathers scales per row). float64
    compute (tests) always takes the reference. ``group_size`` is accepted as any value
    the checkpoint may hold (-1, 32, 128, 192...): the CPU path re-blocks groups itself.
    """
    dev = torch.device(device).type
    if dtype == torch.float64:
        return KernelChoice("reference", "float64 compute: only the reference path has it")
    if dev == "cuda":
        if bits not in TRITON_BITS:
            return KernelChoice("reference", f"{bits} bits: the Triton kernel supports "
                                             f"{TRITON_BITS}")
        if triton_mode() != "compiled":
            return KernelChoice("reference", f"Triton not compiled here ({triton_mode()}: "
                                             f"{TRITON_UNAVAILABLE_REASON})")
        return KernelChoice("triton", f"CUDA, {bits} bits: Triton dequant-matmul kernel")
    if dev == "cpu":
        if bits != 4:
            return KernelChoice("reference", f"{bits} bits on CPU: torch's CPU op is int4 only")
        reason = _int4_cpu_ops_reason()
        if reason:
            return KernelChoice("reference", reason)
        if out_features is not None and out_features % INT4_CPU_N_MULTIPLE:
            return KernelChoice("reference", f"out_features {out_features} is not a multiple "
                                             f"of {INT4_CPU_N_MULTIPLE} (CPU int4 op)")
        return KernelChoice("int4-cpu", "CPU, 4 bits: aten._weight_int4pack_mm_for_cpu "
                                        "(bfloat16 compute)")
    return KernelChoice("reference", f"device {dev}: no fast path")


def available_kernels() -> dict[str, str | None]:
    """Each kernel -> None if it can run here, else why not."""
    return {
        "int4-cpu": _int4_cpu_ops_reason(),
        "triton": (None if triton_mode() == "compiled" else
                   "interpreter only (CPU): correct but slow, for tests"
                   if triton_mode() == "interpreter" else TRITON_UNAVAILABLE_REASON),
        "reference": None,
    }
