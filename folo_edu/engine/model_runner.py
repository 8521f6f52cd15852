"""ModelRunner: turns a SchedulerOutput into one forward pass and one sampler call.

It flattens every scheduled request into one variable-length batch with no
padding (input_ids, positions, slot_mapping, block tables, lengths), runs the
model once, and samples the next token of every request whose scheduled tokens
reach the end of its sequence. It decides no policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from folo_edu.attention import AttentionMetadata, get_backend
from folo_edu.config import EngineConfig
from folo_edu.engine.cuda_graphs import DecodeGraphRunner
from folo_edu.engine.scheduler import SchedulerOutput
from folo_edu.kv_cache.storage import allocate_kv_cache
from folo_edu.models.weights import load_model
from folo_edu.sample import Sampler, SamplingMetadata, compute_logprobs, make_generator


@dataclass
class SampledToken:
    token_id: int
    logprob: float
    top_logprobs: dict[int, float] | None


@dataclass
class ModelRunnerOutput:
    sampled: dict[str, SampledToken] = field(default_factory=dict)
    # request id -> logprob dicts for prompt positions computed this step
    prompt_logprobs: dict[str, list[dict[int, float]]] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, config: EngineConfig):
        mc = config.model_config
        self.device, self.dtype = mc.torch_device, mc.torch_dtype
        self.backend = get_backend(config.attention_backend, self.device,
                                   compile=config.torch_compile)
        self.model = load_model(mc.path, mc.hf_config, self.backend, self.dtype, self.device)
        if config.torch_compile:
            self.model.compile_dense()
        self.block_size = config.tokens_per_block
        self.kv_cache = allocate_kv_cache(
            mc.num_layers, config.cache_config.num_kv_blocks, self.block_size,
            mc.num_kv_heads, mc.head_dim, self.dtype, self.device)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache = self.kv_cache[0, i]
            layer.self_attn.v_cache = self.kv_cache[1, i]
        self.sampler = Sampler()
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
        for rid in sched.finished_ids:
            self.generators.pop(rid, None)
        out = ModelRunnerOutput()
        if not sched.scheduled:
            return out
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        query_lens, seq_lens, tables = [], [], []
        sample_rows, sample_reqs = [], []
        prompt_lp_rows: list[tuple] = []  # (request, first flat row, first position, count)
        bs = self.block_size
        # Decodes first, shortest first: the attention backends batch decodes of
        # similar length together (AttentionMetadata.decode_groups).
        for s in sorted(sched.scheduled, key=lambda s: (s.num_new_tokens != 1,
                                                         s.request.num_tokens)):
            req, n = s.request, s.num_new_tokens
            start, end = req.num_computed_tokens, req.num_computed_tokens + n
            flat = len(input_ids)
            if n == 1 and end == req.num_tokens and req.output_token_ids:
                input_ids.append(req.output_token_ids[-1])
            else:
                input_ids.extend(req.all_token_ids[start:end])
            positions.extend(range(start, end))
            table = s.block_table
            slots.extend(table[p // bs] * bs + p % bs for p in range(start, end))
            query_lens.append(n)
            seq_lens.append(end)
            tables.append(table)
            if end == req.num_tokens:
                sample_rows.append(flat + n - 1)
                sample_reqs.append(req)
            wants_prompt_lp = (req.sampling_params.prompt_logprobs is not None
                               and req.prompt_logprobs is not None
                               and len(req.prompt_logprobs) < req.num_prompt_tokens)
            if wants_prompt_lp and start < req.num_prompt_tokens - 1:
                count = min(end, req.num_prompt_tokens - 1) - start
                prompt_lp_rows.append((req, flat, start, count))

        dev = self.device
        width = max(len(t) for t in tables)
        ids_t = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(positions, dtype=torch.long, device=dev)
        slots_t = torch.tensor(slots, dtype=torch.long, device=dev)
        tables_t = torch.tensor([t + [0] * (width - len(t)) for t in tables],
                                dtype=torch.long, device=dev)
        if self.graph_runner is not None and len(input_ids) == len(query_lens):
            # Decode-only step: replay a captured graph.
            hidden = self.graph_runner.run(ids_t, pos_t, slots_t, tables_t,
                                           torch.tensor(seq_lens, dtype=torch.int32, device=dev))
        else:
            meta = AttentionMetadata.build(query_lens, seq_lens, slots_t, tables_t, bs)
            hidden = self.model(ids_t, pos_t, meta)
        if sample_reqs:
            logits = self.model.compute_logits(hidden[sample_rows])
            result = self.sampler(logits, self._sampling_metadata(sample_reqs))
            for i, req in enumerate(sample_reqs):
                out.sampled[req.request_id] = SampledToken(
                    result.token_ids[i], result.sampled_logprobs[i], result.top_logprobs[i])
        for req, flat, start, count in prompt_lp_rows:
            out.prompt_logprobs[req.request_id] = self._prompt_logprobs(
                hidden[flat:flat + count], req, start, count)
        return out

    def _sampling_metadata(self, reqs) -> SamplingMetadata:
        gens = []
        for req in reqs:
            seed = req.sampling_params.seed
            if seed is not None and req.request_id not in self.generators:
                self.generators[req.request_id] = make_generator(seed, self.device)
            gens.append(self.generators.get(req.request_id))
        return SamplingMetadata(
            params=[r.sampling_params for r in reqs],
            prompt_token_ids=[r.prompt_token_ids for r in reqs],
            output_token_ids=[r.output_token_ids for r in reqs],
            generators=gens,
            eos_token_ids=[set() if r.eos_token_id is None else {r.eos_token_id} for r in reqs])

    def _prompt_logprobs(self, hidden, req, start, count) -> list[dict[int, float]]:
        """Logprob of each next prompt token (and the top-N) at positions start..start+count."""
        logits = self.model.compute_logits(hidden)
        logprobs = compute_logprobs(logits)
        n = req.sampling_params.prompt_logprobs
        actual = torch.tensor(req.prompt_token_ids[start + 1:start + 1 + count],
                              device=logprobs.device)
        actual_lp = logprobs.gather(1, actual[:, None])[:, 0].tolist()
        top_lp, top_ids = logprobs.topk(n, dim=-1) if n else (None, None)
        dicts = []
        for i in range(count):
            d = dict(zip(top_ids[i].tolist(), top_lp[i].tolist())) if n else {}
            d[actual[i].item()] = actual_lp[i]
            dicts.append(d)
        return dicts
