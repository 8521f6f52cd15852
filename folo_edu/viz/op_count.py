"""Counting the ops of one decode step (M4): each one a kernel launch on a GPU.

``OpCounter`` sees every aten op a forward pass runs; ``random_decoder`` builds a model
with random weights (no checkpoint), ``decode_inputs`` one decode step for it, and
``count_decode_ops`` and ``time_decode_forward`` count and time that step.
"""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from folo_edu.attention import AttentionMetadata, get_backend
from folo_edu.kv_cache.slots import slot_of
from folo_edu.viz._plot import BACKEND_STYLE, new_ax, seconds


class OpCounter(TorchDispatchMode):
    """Counts the aten ops that run inside it: roughly the kernels an eager GPU run launches.

    Views (no data touched), allocations (``empty*``) and dtype arithmetic launch no
    kernel and are left out. ``item`` (``.item()``, ``int(tensor)``) is counted apart, as
    a host sync: on a GPU the CPU stops there until the device has caught up.
    """

    NO_KERNEL = ("aten::empty", "aten::promote_types", "aten::result_type")
    SYNC = ("aten::item", "aten::_local_scalar_dense")

    def __init__(self):
        super().__init__()
        self.kernels: Counter = Counter()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name.startswith(self.SYNC):
            self.syncs += 1
        elif not func.is_view and not name.startswith(self.NO_KERNEL):
            self.kernels[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    def launch(self, name: str) -> None:
        """Record one kernel launch that does not go through aten (a Triton kernel)."""
        self.kernels[name] += 1


def random_decoder(name: str = "qwen3-odd-headdim", backend: str = "sdpa", seed: int = 0,
                   device="cpu", **overrides):
    """A DecoderModel with random weights for one of ``models.tiny.TINY_CONFIGS`` (config
    overrides such as num_hidden_layers=28 win), built in memory: no checkpoint."""
    from folo_edu.models.decoder import DecoderModel, DecoderSpec
    from folo_edu.models.tiny import tiny_hf_config

    torch.manual_seed(seed)
    model = DecoderModel(DecoderSpec(tiny_hf_config(name, **overrides)),
                         get_backend(backend, device)).to(device)
    model.init_rotary(device)
    return model.eval()


def set_backend(model, name: str) -> None:
    """Make every attention layer of ``model`` use attention backend ``name``."""
    backend = get_backend(name, next(model.parameters()).device)
    for layer in model.layers:
        layer.self_attn.backend = backend


def decode_inputs(model, batch: int, context_len: int, block_size: int = 16, seed: int = 0):
    """Give ``model`` a paged cache of random K/V and return (input_ids, positions, meta) of
    one decode step of ``batch`` sequences of ``context_len`` tokens (the last one new)."""
    from folo_edu.attention.storage import allocate_kv_cache

    spec, param = model.spec, next(model.parameters())
    nb = -(-context_len // block_size)
    cache = allocate_kv_cache(spec.num_layers, batch * nb, block_size, spec.num_kv_heads,
                              spec.head_dim, param.dtype, param.device)
    cache.normal_(generator=torch.Generator(param.device).manual_seed(seed))
    for i, layer in enumerate(model.layers):
        layer.self_attn.k_cache, layer.self_attn.v_cache = cache[0, i], cache[1, i]
    tables = torch.arange(batch * nb, device=param.device).view(batch, nb)
    last = context_len - 1
    slots = torch.tensor([slot_of(t, block_size, last) for t in tables.tolist()],
                         device=param.device)
    ids = torch.randint(3, spec.vocab_size, (batch,),
                        generator=torch.Generator().manual_seed(seed)).to(param.device)
    positions = torch.full((batch,), last, device=param.device)
    return ids, positions, AttentionMetadata.build([1] * batch, [context_len] * batch, slots,
                                                   tables, block_size)


@torch.inference_mode()
def count_decode_ops(model, batch: int, context_len: int, block_size: int = 16) -> dict:
    """Kernels and host syncs of one decode step of ``model`` (its current backend).

    Returns ``{"kernels": total, "syncs": n, "by_op": Counter}``. A Triton backend's kernels
    do not go through aten (on a CPU they run in the interpreter), so for it each
    ``store_kv`` and ``paged_decode_attention`` call is counted as the one launch it is
    on a GPU, without running it.
    """
    ids, positions, meta = decode_inputs(model, batch, context_len, block_size)
    counter = OpCounter()
    backend = model.layers[0].self_attn.backend
    swap = backend.name == "triton"
    if swap:
        class FakeKernels:  # one recorded launch per call, nothing run
            @staticmethod
            def store_kv(*args):
                counter.launch("triton:store_kv")

            @staticmethod
            def paged_decode_attention(q, *args):
                counter.launch("triton:paged_decode_attention")
                return torch.empty_like(q)

        real, backend.kernels = backend.kernels, FakeKernels
    try:
        with counter:
            model(ids, positions, meta)
    finally:
        if swap:
            backend.kernels = real
    return {"kernels": sum(counter.kernels.values()), "syncs": counter.syncs,
            "by_op": counter.kernels}


@torch.inference_mode()
def time_decode_forward(model, batch: int, context_len: int, repeats: int = 3,
                        block_size: int = 16) -> float:
    """Seconds (best of ``repeats`` after a warm-up) of one decode-step forward of ``model``."""
    ids, positions, meta = decode_inputs(model, batch, context_len, block_size)
    device = ids.device
    seconds(lambda: model(ids, positions, meta), device)
    return min(seconds(lambda: model(ids, positions, meta), device) for _ in range(repeats))


def plot_op_counts(counts: dict, ax=None, title: str | None = None):
    """Kernels per decode step against batch size, one line per backend.

    counts: ``{backend: {batch: count_decode_ops result}}``. Returns the Figure."""
    ax = new_ax(ax, (6.5, 3.4))
    for name, by_batch in counts.items():
        batches = sorted(by_batch)
        color, marker = BACKEND_STYLE.get(name, ("C4", "x"))
        ax.plot(batches, [by_batch[b]["kernels"] for b in batches], marker=marker,
                color=color, label=name)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, None)
    ax.set(xlabel="decode batch size", ylabel="kernels launched per step",
           title=title or "ops in one decode step (eager): each one a kernel launch on a GPU")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(True, which="both", alpha=0.25)
    return ax.figure
