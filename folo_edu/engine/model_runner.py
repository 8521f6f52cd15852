"""ModelRunner: turns a SchedulerOutput into one forward pass and one sampler call.

It flattens every scheduled request into one variable-length batch with no
padding (input_ids, positions, slot_mapping, block tables, lengths), runs the
model once, and samples the next token of every request whose scheduled tokens
reach the end of its sequence. It decides no policy and never holds a Request: the
SchedulerOutput carries everything it reads, and the engine applies what it returns.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from folo_edu.attention import AttentionMetadata, allocate_kv_cache, get_backend
from folo_edu.config import EngineConfig
from folo_edu.engine.cuda_graphs import DecodeGraphRunner
from folo_edu.engine.scheduler_output import ScheduledSequence, SchedulerOutput
from folo_edu.kv_cache.slots import slot_mapping
from folo_edu.models.weights import load_model
from folo_edu.sample import Sampler, SamplingMetadata, compute_logprobs, make_generator


# token id -> (logprob, rank): the chosen token and the top-N at one position. The engine
# turns these into Logprob objects (it has the tokenizer for their text).
RankedLogprobs = dict[int, tuple[float, int]]


@dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_logprobs: RankedLogprobs | None  # None unless the request asked for logprobs


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, SampledToken] = field(default_factory=dict)
    # request id -> one RankedLogprobs per prompt position computed this step
    prompt_logprobs: dict[str, list[RankedLogprobs]] = field(default_factory=dict)


def _linear_kernel(config: EngineConfig, device: torch.device, dtype: torch.dtype):
    """EngineConfig.linear_backend's kernel for few-row matmuls, or None (torch)."""
    if config.linear_backend == "torch" or (config.linear_backend == "auto"
                                            and device.type != "cpu"):
        return None  # no Numba import where it cannot be used
    from folo_edu.models.numba_linear import get_linear_kernel

    return get_linear_kernel(config.linear_backend, device, dtype, config.torch_compile)


class ModelRunner:
    def __init__(self, config: EngineConfig):
        mc = config.model_config
        self.device, self.dtype = mc.torch_device, mc.torch_dtype
        self.backend = get_backend(config.attention_backend, self.device,
                                   compile=config.torch_compile)
        linear_kernel = _linear_kernel(config, self.device, self.dtype)
        self.model = load_model(mc.path, mc.hf_config, self.backend, self.dtype, self.device)
        self.model.set_linear_kernel(linear_kernel)
        self.linear_backend = "numba" if linear_kernel is not None else "torch"
        if config.torch_compile:
            self.model.compile_dense()
        self.block_size = config.tokens_per_block
        self.kv_cache = allocate_kv_cache(
            mc.num_layers, config.cache_config.num_kv_blocks, self.block_size,
            mc.num_kv_heads, mc.head_dim, self.dtype, self.device)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache = self.kv_cache[0, i]
            layer.self_attn.v_cache = self.kv_cache[1, i]
        # Unseeded sampling draws from one generator seeded with LLM(seed=...): same seed,
        # same requests in the same order, same tokens.
        self.sampler = Sampler(generator=make_generator(mc.seed, self.device))
        self.generators: dict[str, torch.Generator] = {}
        self.graph_runner: DecodeGraphRunner | None = None
        self.cuda_graph_status = self._capture_cuda_graphs(config)

    def _capture_cuda_graphs(self, config: EngineConfig) -> str:
        """Capture decode graphs when device and backend allow; say what happened and why."""
        if config.enforce_eager:
            return "off: enforce_eager=True"
        if self.device.type != "cuda":
            return f"off: CUDA graphs need a CUDA device, this engine runs on {self.device.type}"
        if not self.backend.supports_cuda_graphs:
            return (f"off: attention backend {self.backend.name!r} reads per-step Python "
                    "lengths in its decode path, so it cannot be captured; "
                    "use attention_backend='triton'")
        max_model_len = config.model_config.max_model_len
        self.graph_runner = DecodeGraphRunner(
            self.model, max_batch=config.scheduler_config.max_num_seqs,
            max_blocks_per_seq=-(-max_model_len // self.block_size),
            block_size=self.block_size, hidden_size=self.model.spec.hidden_size,
            dtype=self.dtype, device=self.device)
        return f"on: decode graphs for batch sizes {self.graph_runner.batch_sizes}"

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """One forward pass over every scheduled sequence, in the scheduler's order."""
        for rid in sched.finished_ids:
            self.generators.pop(rid, None)
        out = ModelRunnerOutput()
        if not sched.scheduled:
            return out
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, seq_lens, tables = [], [], []
        sample_rows, to_sample = [], []
        prompt_lp: list[tuple[ScheduledSequence, int]] = []  # (sequence, its first flat row)
        for s in sched.scheduled:
            flat = len(input_ids)
            input_ids.extend(s.token_ids)
            positions.extend(range(s.start, s.end))
            slots.extend(slot_mapping(s.block_table, self.block_size, s.start, s.end))
            query_lens.append(s.num_new_tokens)
            seq_lens.append(s.end)
            tables.append(s.block_table)
            if s.sample:
                sample_rows.append(flat + s.num_new_tokens - 1)
                to_sample.append(s)
            if s.prompt_logprobs_count:
                prompt_lp.append((s, flat + s.prompt_logprobs_start - s.start))

        dev = self.device
        width = max(len(t) for t in tables)
        ids_t = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        slots_t = torch.tensor(slots, dtype=torch.long, device=dev)
        tables_t = torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                dtype=torch.long, device=dev)
        with self.model.threads_for_step(len(input_ids)):  # see numba_kernels
            if self.graph_runner is not None and len(input_ids) == len(query_lens):
                # Decode-only step: replay a captured graph.
                hidden = self.graph_runner.run(
                    ids_t, pos_t, slots_t, tables_t,
                    torch.tensor(seq_lens, dtype=torch.int32, device=dev))
            else:
                meta = AttentionMetadata.build(query_lens, seq_lens, slots_t, tables_t,
                                               self.block_size)
                hidden = self.model(ids_t, pos_t, meta)
            logits = self.model.compute_logits(hidden[sample_rows]) if to_sample else None
        if to_sample:
            result = self.sampler(logits, self._sampling_metadata(to_sample))
            for i, s in enumerate(to_sample):
                top = result.top_logprobs[i]
                if top is not None:  # the sampled token first, then the top N (rank order)
                    values = list(top.values())
                    top = {t: (lp, result.sampled_ranks[i] if j == 0
                               else 1 + sum(v > lp for v in values))
                           for j, (t, lp) in enumerate(top.items())}
                out.sampled[s.request_id] = SampledToken(
                    result.token_ids[i], result.sampled_logprobs[i], top)
        for s, row in prompt_lp:
            out.prompt_logprobs[s.request_id] = self._prompt_logprobs(
                hidden[row:row + s.prompt_logprobs_count], s)
        return out

    def _sampling_metadata(self, seqs: list[ScheduledSequence]) -> SamplingMetadata:
        gens = []
        for s in seqs:
            seed = s.sampling_params.seed
            if seed is not None and s.request_id not in self.generators:
                self.generators[s.request_id] = make_generator(seed, self.device)
            gens.append(self.generators.get(s.request_id))
        return SamplingMetadata(
            params=[s.sampling_params for s in seqs],
            prompt_token_ids=[s.prompt_token_ids for s in seqs],
            output_token_ids=[s.output_token_ids for s in seqs],
            generators=gens,
            eos_token_ids=[set(s.eos_token_ids) for s in seqs])

    def _prompt_logprobs(self, hidden, s: ScheduledSequence) -> list[RankedLogprobs]:
        """Logprob of each next prompt token (and the top-N) for the rows in ``hidden``,
        which are positions prompt_logprobs_start, +1, ... of sequence ``s``."""
        logprobs = compute_logprobs(self.model.compute_logits(hidden))
        n = s.sampling_params.prompt_logprobs
        first, count = s.prompt_logprobs_start + 1, s.prompt_logprobs_count
        actual = torch.tensor(s.prompt_token_ids[first:first + count], device=logprobs.device)
        actual_lp = logprobs.gather(1, actual[:, None])
        actual_rank = ((logprobs > actual_lp).sum(dim=1) + 1).tolist()
        actual_lp = actual_lp[:, 0].tolist()
        top_lp, top_ids = logprobs.topk(n, dim=-1) if n else (None, None)
        dicts = []
        for i in range(count):
            d = ({t: (lp, r + 1) for r, (t, lp) in
                  enumerate(zip(top_ids[i].tolist(), top_lp[i].tolist()))} if n else {})
            d[actual[i].item()] = (actual_lp[i], actual_rank[i])
            dicts.append(d)
        return dicts
