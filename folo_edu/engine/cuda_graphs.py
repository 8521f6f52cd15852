"""CUDA graphs for decode steps: capture once per batch-size bucket, then replay.

A decode step of a small model is hundreds of tiny kernels; on a GPU the time to
*launch* them from Python can exceed the time they run. A CUDA graph records the
whole forward pass once and replays it with a single launch. The price: a graph
replays exactly what it recorded, so every tensor it reads must live at a fixed
address with a fixed shape. Hence:

- static input buffers, sized for the largest bucket; each step copies its inputs in;
- one graph per bucket of batch sizes (1, 2, 4, 8, 16, 32, ...; nano-vllm's and
  vLLM's recipe), a batch of n running the smallest bucket >= n, its extra rows padded;
- padded rows write their K/V nowhere (slot -1) and read no keys (seq_len 0);
- only a backend whose decode reads nothing but these tensors can be captured
  (``AttentionBackend.supports_cuda_graphs``; here: triton).

With ``capture=False`` the same buffers and padding run eagerly. That is how the CPU
tests check the bucketing and padding logic, which is where graph bugs live.
"""
from __future__ import annotations

import torch

from folo_edu.attention.metadata import AttentionMetadata


def graph_batch_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 16 up to max_batch (and max_batch itself)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_batch]
    sizes += list(range(16, max_batch, 16))
    return sizes + [max_batch]


def bucket_of(n: int, sizes) -> int:
    """The smallest batch size in ``sizes`` that holds n rows."""
    for size in sorted(sizes):
        if size >= n:
            return size
    raise ValueError(f"decode batch of {n}: expected <= {max(sizes)} "
                     "(the largest bucket, the largest captured batch size)")


class DecodeGraphRunner:
    """Runs decode-only steps of `model` through captured graphs (or eagerly, capture=False)."""

    # Inference mode throughout: a capture must not record autograd bookkeeping, and the
    # static buffers are then inference tensors, which only inference mode may write.
    @torch.inference_mode()
    def __init__(self, model, max_batch: int, max_blocks_per_seq: int, block_size: int,
                 hidden_size: int, dtype, device, capture: bool = True):
        self.model, self.block_size, self.capture = model, block_size, capture
        self.batch_sizes = graph_batch_sizes(max_batch)
        zeros = dict(device=device)
        self.input_ids = torch.zeros(max_batch, dtype=torch.long, **zeros)
        self.positions = torch.zeros(max_batch, dtype=torch.long, **zeros)
        self.slot_mapping = torch.full((max_batch,), -1, dtype=torch.long, **zeros)
        self.block_tables = torch.zeros(max_batch, max_blocks_per_seq, dtype=torch.long, **zeros)
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, **zeros)
        self.hidden = torch.zeros(max_batch, hidden_size, dtype=dtype, **zeros)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        if capture:
            self._capture_all()

    def bucket(self, n: int) -> int:
        """The smallest captured batch size that holds n rows."""
        return bucket_of(n, self.batch_sizes)

    def _meta(self, b: int) -> AttentionMetadata:
        # Built from the static buffers. The Python lists are placeholders: a
        # graph-safe backend reads only the tensors (that is what makes it graph-safe).
        return AttentionMetadata(
            query_lens=[1] * b, seq_lens=[1] * b, query_start_loc=list(range(b + 1)),
            slot_mapping=self.slot_mapping[:b], block_tables=self.block_tables[:b],
            block_size=self.block_size, num_decodes=b, seq_lens_tensor=self.seq_lens[:b])

    def _forward(self, b: int) -> None:
        self.hidden[:b] = self.model(self.input_ids[:b], self.positions[:b], self._meta(b))

    def _capture_all(self) -> None:
        pool = None
        # Largest first, so the smaller graphs reuse its memory pool.
        for b in reversed(self.batch_sizes):
            self._forward(b)  # warm-up: lazy inits and Triton compiles happen outside capture
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(b)
            pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, input_ids, positions, slot_mapping, block_tables, seq_lens) -> torch.Tensor:
        """One decode step for n sequences -> hidden states [n, hidden] (a view: copy to keep)."""
        n, width = block_tables.shape
        b = self.bucket(n)
        self.input_ids[:n] = input_ids
        self.positions[:n] = positions
        self.slot_mapping[:n] = slot_mapping
        self.block_tables[:n, :width] = block_tables
        self.seq_lens[:n] = seq_lens
        # Padding rows: token 0 at position 0, stored nowhere, attending to nothing.
        self.input_ids[n:b] = 0
        self.positions[n:b] = 0
        self.slot_mapping[n:b] = -1
        self.seq_lens[n:b] = 0
        if self.capture:
            self.graphs[b].replay()
        else:
            self._forward(b)
        return self.hidden[:n]
