"""The two engines under test, behind the same small interface.

FoloRunner drives folo_edu (``LLM`` / ``LLMEngine``); HFRunner drives transformers'
``generate``. Both run greedy decoding with EOS ignored, so every request yields
exactly its ``max_tokens`` tokens, and both return plain numbers and token ids.

Timing rules, the same on both sides:
  * ``time.perf_counter`` around the call, after a device synchronize on CUDA;
  * a token counts as produced when the host has it (folo: ``step()`` returned it;
    transformers: its streamer's ``put`` got it);
  * decode tokens/s of one request = (N - 1) / (t_N - t_1), where t_1 and t_N are
    the times of its first and last token, so the prefill is left out.

Every run also records the process CPU time (``time.process_time``) at the same
points. On a machine shared with other jobs the wall clock includes the time this
process was waiting for a core; CPU time mostly does not, so the ``*_cpu`` numbers
are a second, steadier view (on CUDA they mean little: use the wall clock there).
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import torch

from folo_edu.bench.machine import synchronize
from folo_edu.bench.workloads import BenchRequest


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _decode_tok_s(times: list[float]) -> float | None:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


class FoloRunner:
    name = "folo_edu"

    def __init__(self, model_path: str, device: torch.device, dtype: str = "float32",
                 max_model_len: int = 1024, max_num_seqs: int = 64, kv_cache: str = "paged",
                 attention_backend: str = "auto", kv_cache_memory_bytes: int | None = None,
                 **engine_kwargs):
        from folo_edu import LLM

        self.device = device
        # A folder without a tokenizer (e.g. a random model of the same shape, built for
        # a GPU machine that cannot download) runs on token ids alone, without
        # detokenization; the result file says so in folo_edu_settings.
        self.has_tokenizer = any((Path(model_path) / f).is_file() for f in _TOKENIZER_FILES)
        self.llm = LLM(model_path, dtype=dtype, device=device.type, max_model_len=max_model_len,
                       max_num_seqs=max_num_seqs, kv_cache=kv_cache,
                       attention_backend=attention_backend,
                       kv_cache_memory_bytes=kv_cache_memory_bytes,
                       skip_tokenizer_init=not self.has_tokenizer, **engine_kwargs)
        self._ids = itertools.count()
        runner = self.llm.llm_engine.model_runner
        self.settings = {"dtype": str(runner.dtype).replace("torch.", ""),
                         "max_model_len": max_model_len, "max_num_seqs": max_num_seqs,
                         "kv_cache": kv_cache, "attention_backend": runner.backend.name,
                         "num_kv_blocks": self.llm.llm_engine.kv_manager.num_blocks,
                         "block_size": self.llm.llm_engine.config.tokens_per_block,
                         "detokenize": self.has_tokenizer,
                         "cuda_graphs": runner.cuda_graph_status, **engine_kwargs}

    @staticmethod
    def _params(n: int, delta: bool = False):
        from folo_edu import RequestOutputKind, SamplingParams

        kind = RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY
        return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, output_kind=kind)

    def run_one(self, req: BenchRequest) -> dict:
        """One request alone, stepping the engine and timing each token as it arrives."""
        engine = self.llm.llm_engine
        rid = f"bench-{next(self._ids)}"
        tokens, times, cpu = [], [], []
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        engine.add_request(rid, {"prompt_token_ids": req.prompt_token_ids},
                           self._params(req.max_tokens, delta=True))
        done = False
        while not done:
            outs = engine.step()
            now, now_cpu = time.perf_counter(), time.process_time()
            for out in outs:
                if out.request_id == rid:
                    new = out.outputs[0].token_ids
                    tokens.extend(new)
                    times.extend([now] * len(new))
                    cpu.extend([now_cpu] * len(new))
                    done = out.finished
        return {"ttft_s": times[0] - t0, "total_s": times[-1] - t0,
                "decode_tok_s": _decode_tok_s(times), "ttft_cpu_s": cpu[0] - c0,
                "total_cpu_s": cpu[-1] - c0, "decode_tok_s_cpu": _decode_tok_s(cpu),
                "num_tokens": len(tokens), "token_ids": tokens}

    def run_batch(self, reqs: list[BenchRequest]) -> dict:
        """All requests added at once, then stepped to the end (continuous batching)."""
        engine = self.llm.llm_engine
        preempt0 = engine.scheduler.num_preemptions
        prompts = [{"prompt_token_ids": r.prompt_token_ids} for r in reqs]
        params = [self._params(r.max_tokens) for r in reqs]
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        synchronize(self.device)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        token_ids = [o.outputs[0].token_ids for o in outs]
        ttft = [o.metrics.ttft for o in outs]
        latency = [o.metrics.finished_time - o.metrics.arrival_time for o in outs]
        return {"wall_s": wall, "cpu_s": cpu_s, "output_tokens": sum(map(len, token_ids)),
                "token_ids": token_ids, "ttft_s": ttft, "latency_s": latency,
                "num_preemptions": engine.scheduler.num_preemptions - preempt0}


class _TimingStreamer:
    """A transformers streamer that only records when each new token reached the host."""

    def __init__(self):
        self.times: list[float] = []
        self.cpu: list[float] = []
        self._prompt_seen = False

    def put(self, value) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        n = value.numel() if hasattr(value, "numel") else 1
        self.times.extend([now] * n)
        self.cpu.extend([now_cpu] * n)

    def end(self) -> None:
        pass


class HFRunner:
    """transformers ``generate``: same folder, same dtype, eval(), inference_mode,
    its default attention implementation (sdpa), and pad_token_id set."""

    name = "transformers"

    def __init__(self, model_path: str, device: torch.device, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
        self.model.eval()
        cfg = self.model.config
        pad = cfg.pad_token_id
        if pad is None:
            eos = cfg.eos_token_id
            pad = eos[0] if isinstance(eos, (list, tuple)) else eos
        self.pad_id = pad if pad is not None else 0
        self.model.generation_config.pad_token_id = self.pad_id
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.settings = {"dtype": str(dtype).replace("torch.", ""),
                         "attn_implementation": cfg._attn_implementation,
                         "pad_token_id": self.pad_id, "num_parameters": self.num_parameters}

    @torch.inference_mode()
    def generate(self, input_ids, attention_mask, n: int, streamer=None,
                 stopping_criteria=None):
        """Greedy ``generate`` of exactly ``n`` new tokens per row."""
        return self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=n,
            min_new_tokens=n,  # EOS is suppressed until n tokens: every row yields exactly n
            do_sample=False, temperature=None, top_p=None, top_k=None,
            pad_token_id=self.pad_id, streamer=streamer, stopping_criteria=stopping_criteria)

    def left_padded(self, prompts: list[list[int]]):
        """``(input_ids, attention_mask)`` of prompts left-padded to the longest one."""
        width = max(len(p) for p in prompts)
        ids = [[self.pad_id] * (width - len(p)) + list(p) for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        return (torch.tensor(ids, device=self.device), torch.tensor(mask, device=self.device))

    def _one(self, req: BenchRequest):
        ids = torch.tensor([req.prompt_token_ids], device=self.device)
        return ids, torch.ones_like(ids)

    def time_to_first_token(self, req: BenchRequest) -> tuple[float, float]:
        """TTFT as a user of generate sees it: generate(max_new_tokens=1) end to end.
        Returns (wall seconds, CPU seconds)."""
        ids, mask = self._one(req)
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        self.generate(ids, mask, 1)
        synchronize(self.device)
        return time.perf_counter() - t0, time.process_time() - c0

    def run_one(self, req: BenchRequest) -> dict:
        """One request, timing each token as the streamer receives it."""
        ids, mask = self._one(req)
        streamer = _TimingStreamer()
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.generate(ids, mask, req.max_tokens, streamer)
        synchronize(self.device)
        total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
        tokens = out[0, ids.shape[1]:].tolist()
        times, cpu = streamer.times, streamer.cpu
        return {"ttft_in_run_s": times[0] - t0, "total_s": total,
                "decode_tok_s": _decode_tok_s(times), "total_cpu_s": total_cpu,
                "decode_tok_s_cpu": _decode_tok_s(cpu), "num_tokens": len(tokens),
                "token_ids": tokens}

    def run_static_batch(self, reqs: list[BenchRequest]) -> dict:
        """One static batch, left-padded to its longest prompt and run until its
        longest output; each row keeps only the first max_tokens of its tokens."""
        width = max(r.prompt_len for r in reqs)
        steps = max(r.max_tokens for r in reqs)
        ids, mask = self.left_padded([r.prompt_token_ids for r in reqs])
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        out = self.generate(ids, mask, steps)
        synchronize(self.device)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        gen = out[:, width:].tolist()
        token_ids = [row[:r.max_tokens] for row, r in zip(gen, reqs)]
        return {"wall_s": wall, "cpu_s": cpu_s, "batch_size": len(reqs), "steps": steps,
                "prompt_width": width,
                "useful_output_tokens": sum(r.max_tokens for r in reqs),
                "computed_output_tokens": len(reqs) * steps,
                "useful_prompt_tokens": sum(r.prompt_len for r in reqs),
                "computed_prompt_tokens": len(reqs) * width,
                "token_ids": token_ids}

    @torch.inference_mode()
    def run_continuous(self, reqs: list[BenchRequest], max_requests: int = 64,
                       cache_tokens: int | None = None, max_batch_tokens: int = 2048) -> dict:
        """transformers' own continuous batching (the manager behind ``generate_batch``,
        paged attention): every request at once, each with its own max_new_tokens and
        EOS disabled (eos_token_id=-1), greedy. At most ``max_requests`` sequences and
        ``max_batch_tokens`` tokens per step, and a KV cache of ``cache_tokens`` tokens
        (as folo_edu's), so neither engine gets more memory or a bigger step."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        gen = GenerationConfig(do_sample=False, max_new_tokens=max(r.max_tokens for r in reqs),
                               eos_token_id=-1, pad_token_id=self.pad_id)
        cb = ContinuousBatchingConfig(max_requests_per_batch=max_requests,
                                      max_batch_tokens=max_batch_tokens)
        if cache_tokens:
            cb.num_blocks = -(-cache_tokens // cb.page_size)
        ids = [f"r{i}" for i in range(len(reqs))]
        results = {}
        synchronize(self.device)
        c0, t0 = time.process_time(), time.perf_counter()
        with self.model.continuous_batching_context_manager(
                generation_config=gen, continuous_batching_config=cb, block=True,
                warmup=False) as manager:
            for rid, r in zip(ids, reqs):
                manager.add_request(list(r.prompt_token_ids), request_id=rid,
                                    max_new_tokens=r.max_tokens, eos_token_id=-1)
            while len(results) < len(reqs):
                out = manager.get_result(timeout=1)
                if out is not None and out.is_finished():
                    if out.error is not None:
                        raise RuntimeError(f"transformers continuous batching: {out.error}")
                    results[out.request_id] = out.generated_tokens
                elif out is None and not manager.is_running():
                    raise RuntimeError("transformers continuous batching stopped early")
        synchronize(self.device)
        wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
        token_ids = [list(results[rid]) for rid in ids]
        return {"wall_s": wall, "cpu_s": cpu_s, "output_tokens": sum(map(len, token_ids)),
                "token_ids": token_ids}
