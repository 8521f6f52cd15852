"""LLM: the user-facing API, with vLLM's names (generate, chat, stream)."""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from folo_edu.config import EngineConfig
from folo_edu.engine.llm_engine import LLMEngine
from folo_edu.outputs import RequestOutput
from folo_edu.sampling_params import RequestOutputKind, SamplingParams


class LLM:
    """Load a model once, then generate from many prompts at a time.

    ``LLM()`` loads the default model (SmolLM2-135M-Instruct). Every keyword is
    one of EngineConfig.from_kwargs's: dtype, max_model_len, block_size,
    num_kv_blocks, kv_cache_memory_bytes, kv_cache ("paged"/"contiguous"),
    max_num_seqs, max_num_batched_tokens, enable_chunked_prefill (default True),
    long_prefill_token_threshold, enable_prefix_caching (default: True when paged),
    attention_backend ("auto", "naive", "sdpa", "paged-torch", "flex", "triton", "numba"),
    linear_backend ("auto", "torch", "numba": who multiplies decode rows by the weights),
    enforce_eager (True: never use CUDA graphs), torch_compile, device, seed,
    skip_tokenizer_init.
    """

    def __init__(self, model: str | None = None, **kwargs):
        self.llm_engine = LLMEngine(EngineConfig.from_kwargs(model, **kwargs))
        self._ids = itertools.count()

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix block (False while requests are running)."""
        return self.llm_engine.reset_prefix_cache()

    def get_tokenizer(self):
        return self.llm_engine.tokenizer

    def generate(self, prompts, sampling_params: SamplingParams | Sequence[SamplingParams]
                 | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for one prompt or a list; returns one RequestOutput per prompt, in order.

        A prompt is a str or {"prompt_token_ids": [...]}. sampling_params is one
        SamplingParams for all, or a list with one per prompt. If any prompt is
        invalid, nothing is generated and the error names it.
        """
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        params = self._params_per_prompt(prompts, sampling_params)
        ids = self._add_all(prompts, [p.clone(output_kind=RequestOutputKind.FINAL_ONLY)
                                      for p in params])
        return self._run(ids, use_tqdm)

    def chat(self, messages, sampling_params: SamplingParams | None = None,
             use_tqdm: bool = True, add_generation_prompt: bool = True) -> list[RequestOutput]:
        """Apply the tokenizer's chat template, then generate.

        messages: one conversation (a list of {"role", "content"} dicts) or a list
        of conversations.
        """
        tok = self._require_tokenizer("chat")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conv in conversations:
            ids = tok.apply_chat_template(conv, add_generation_prompt=add_generation_prompt,
                                          tokenize=True)
            if not isinstance(ids, list):  # newer transformers return a BatchEncoding
                ids = list(ids["input_ids"])
            prompts.append({"prompt_token_ids": ids,
                            "prompt": tok.decode(ids, skip_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm)

    def stream(self, prompt, sampling_params: SamplingParams | None = None) -> Iterator[str]:
        """Yield the text of one prompt piece by piece, as it is generated."""
        params = (sampling_params or SamplingParams()).clone(output_kind=RequestOutputKind.DELTA)
        rid = f"stream-{next(self._ids)}"
        engine = self.llm_engine
        engine.add_request(rid, prompt, params)
        try:
            done = False
            while not done:
                for out in engine.step():
                    if out.request_id == rid:
                        done = out.finished
                        if out.outputs[0].text:
                            yield out.outputs[0].text
        finally:
            if rid in engine._groups:  # the caller stopped early: free its blocks
                engine.abort_request(rid)

    # ---- helpers -------------------------------------------------------------------
    def _params_per_prompt(self, prompts, sampling_params) -> list[SamplingParams]:
        if sampling_params is None:
            return [SamplingParams()] * len(prompts)
        if isinstance(sampling_params, SamplingParams):
            return [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"sampling_params has {len(sampling_params)} entries; expected "
                             f"one SamplingParams or one per prompt ({len(prompts)})")
        return list(sampling_params)

    def _add_all(self, prompts, params) -> list[str]:
        engine, ids = self.llm_engine, []
        try:
            for i, (prompt, p) in enumerate(zip(prompts, params)):
                rid = str(next(self._ids))
                try:
                    engine.add_request(rid, prompt, p)
                except (ValueError, TypeError) as e:
                    raise type(e)(f"prompt {i}: {e}") from e
                ids.append(rid)
        except Exception:
            if ids:  # leave the engine as it was
                engine.abort_request(ids)
            raise
        return ids

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        pending, results = set(ids), {}
        bar = None
        if use_tqdm:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(ids), desc="Processed prompts", dynamic_ncols=True)
        try:
            while pending:
                for out in self.llm_engine.step():
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        results[out.request_id] = out
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            left = [r for r in pending if r in self.llm_engine._groups]
            if left:
                self.llm_engine.abort_request(left)
            raise
        finally:
            if bar is not None:
                bar.close()
        return [results[r] for r in ids]

    def _require_tokenizer(self, what: str):
        tok = self.llm_engine.tokenizer
        if tok is None:
            raise ValueError(f"LLM.{what} needs a tokenizer, but skip_tokenizer_init=True")
        return tok
