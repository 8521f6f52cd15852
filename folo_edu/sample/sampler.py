"""The Sampler: one step's logits in, one token per request out (vLLM v1 semantics).

For each row of logits (one request) it:

1. applies the penalties and min_tokens (these change even a greedy request's choice),
2. takes the argmax for greedy rows (temperature 0),
3. for the other rows applies temperature, min_p, top-k and top-p, then samples,
4. reports logprobs of the RAW model distribution (before any of the above), as vLLM
   v1 does by default.

Sampling uses the "exponential race": with ``E_i ~ Exponential(1)`` independent,
``argmax_i(p_i / E_i)`` is token ``i`` with probability exactly ``p_i``. It needs one
random number per token and no cumulative sum, and a seeded request can draw its own
numbers from its own generator, so its tokens do not depend on the rest of the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from folo_edu.sample.logits_processors import (apply_min_p, apply_min_tokens, apply_penalties,
                                               apply_temperature, apply_top_k, apply_top_p)
from folo_edu.sampling_params import SamplingParams


@dataclass
class SamplingMetadata:
    """What the Sampler needs to know about each row of logits (all lists are per row)."""

    params: list[SamplingParams]
    prompt_token_ids: list[list[int]]
    output_token_ids: list[list[int]]  # the tokens generated so far, before this step
    generators: list[torch.Generator | None]  # a seeded generator for requests with a seed
    eos_token_ids: list[set[int]]  # blocked, with params.stop_token_ids, until min_tokens


@dataclass
class SamplerOutput:
    """One sampled token per row, with its logprobs under the raw model distribution."""

    token_ids: list[int]
    sampled_logprobs: list[float]
    # None unless params.logprobs is set; then the top-N token -> logprob, plus the
    # sampled token (listed first), so N or N + 1 entries.
    top_logprobs: list[dict[int, float] | None]
    # The sampled token's rank in the raw distribution (1 = most likely), for rows with
    # params.logprobs set; None for the others.
    sampled_ranks: list[int | None] | None = None


def make_generator(seed: int, device) -> torch.Generator:
    """A random generator on ``device`` seeded with ``seed``, for one seeded request.

    The engine makes one per request and keeps it for the request's whole life, so the
    request's n-th token always comes from the same random numbers.
    """
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def compute_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of every token: ``log_softmax`` in float32 (float64 for float64)."""
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return torch.log_softmax(logits, dim=-1, dtype=dtype)


def _has_penalty(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def _on_rows(x: torch.Tensor, rows: list[int], fn, *args) -> torch.Tensor:
    """``fn(x[rows], *args)`` written back into (a copy of) ``x``; ``args`` are per chosen row.

    Running a processor only on the rows that need it saves most of the work when few
    rows do; when every row does, ``fn`` just runs on ``x``.
    """
    if len(rows) == x.shape[0]:
        return fn(x, *args)
    index = torch.tensor(rows, device=x.device)
    return x.index_copy(0, index, fn(x[index], *args))


def _exponential_noise(generators: list[torch.Generator | None], vocab: int,
                       like: torch.Tensor, default: torch.Generator | None = None
                       ) -> torch.Tensor:
    """``[len(generators), vocab]`` samples of Exponential(1), one row per request.

    A seeded row draws from its own generator, so its numbers (and tokens) are the same
    whatever else is in the batch; the unseeded rows share one draw from ``default``
    (the engine's generator, seeded with ``LLM(seed=...)``; the global RNG if None).
    We use ``-log(U)`` with U uniform in [0, 1), which is Exponential(1) and about twice as
    fast as ``exponential_()`` on a CPU. U = 0 gives +inf, which only makes that token lose.
    """
    uniform = torch.empty(len(generators), vocab, dtype=like.dtype, device=like.device)
    unseeded = [j for j, g in enumerate(generators) if g is None]
    if len(unseeded) == len(generators):
        uniform.uniform_(generator=default)
    elif unseeded:
        uniform[unseeded] = torch.rand(len(unseeded), vocab, dtype=like.dtype, device=like.device,
                                       generator=default)
    for j, generator in enumerate(generators):
        if generator is not None:
            uniform[j].uniform_(generator=generator)
    return uniform.log_().neg_()


class Sampler:
    """Turns a ``[B, V]`` tensor of logits into one token per row, as vLLM v1 does.

    ``top_p_fn`` is the top-p filter, ``fn(logits [B, V], top_p [B]) -> logits [B, V]``
    (default ``apply_top_p``). It is a seam for the notebook 02 lab, which plugs a
    learner's filter into a real engine run (``folo_edu.labs.m1_sampling``).
    ``generator`` feeds the rows without a seed of their own (the engine seeds it with
    ``LLM(seed=...)``, so unseeded runs repeat); None means torch's global RNG.
    """

    def __init__(self, top_p_fn=apply_top_p, generator: torch.Generator | None = None):
        self.top_p_fn = top_p_fn
        self.generator = generator

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """Sample one token for each row of ``logits``, described by the same row of ``meta``."""
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()  # e.g. bfloat16 logits: too coarse for probabilities
        params = meta.params
        num_rows = logits.shape[0]
        penalized = [i for i, p in enumerate(params) if _has_penalty(p)]
        too_short = [i for i, p in enumerate(params)
                     if len(meta.output_token_ids[i]) < p.min_tokens]
        sampled = [i for i, p in enumerate(params) if not p.greedy]

        if not (penalized or too_short or sampled):
            tokens = logits.argmax(dim=-1)  # fast path: all greedy, nothing changes the logits
        else:
            x = logits  # processors return new tensors, so `logits` stays raw for the logprobs
            if penalized:
                # Penalties touch only the tokens a row has seen, so they run on the whole
                # batch; a row without penalties passes no tokens (its values are no-ops).
                wanted = set(penalized)
                prompts = [ids if i in wanted else []
                           for i, ids in enumerate(meta.prompt_token_ids)]
                outputs = [ids if i in wanted else []
                           for i, ids in enumerate(meta.output_token_ids)]
                x = apply_penalties(x, prompts, outputs, *self._row_values(
                    x, range(num_rows), params, "repetition_penalty", "frequency_penalty",
                    "presence_penalty"))
            if too_short:
                stop_ids = [set(eos).union(p.stop_token_ids)
                            for eos, p in zip(meta.eos_token_ids, params)]
                x = apply_min_tokens(x, [len(ids) for ids in meta.output_token_ids],
                                     [p.min_tokens for p in params], stop_ids)
            if len(sampled) == num_rows:
                tokens = self._sample(x, params, meta.generators)
            else:
                tokens = x.argmax(dim=-1)  # greedy rows: penalties and min_tokens still count
                if sampled:
                    index = torch.tensor(sampled, device=x.device)
                    tokens[index] = self._sample(x[index], [params[i] for i in sampled],
                                                 [meta.generators[i] for i in sampled])

        # Raw logprobs: log p(token) = logit - logsumexp(logits), which is log_softmax at
        # the one token we need, without writing out a whole [B, V] tensor.
        logsumexp = torch.logsumexp(logits, dim=-1)
        sampled_logprobs = logits.gather(1, tokens[:, None]).squeeze(1) - logsumexp
        token_list, logprob_list = tokens.tolist(), sampled_logprobs.tolist()
        top = self._top_logprobs(logits, logsumexp, token_list, logprob_list, params)
        return SamplerOutput(token_list, logprob_list, top,
                             self._ranks(logits, tokens, params))

    @staticmethod
    def _ranks(logits: torch.Tensor, tokens: torch.Tensor, params) -> list[int | None]:
        """1 + how many tokens the raw model found strictly likelier, for logprob rows."""
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        ranks: list[int | None] = [None] * len(params)
        if rows:
            index = torch.tensor(rows, device=logits.device)
            chosen = logits[index].gather(1, tokens[index, None])
            for i, r in zip(rows, ((logits[index] > chosen).sum(dim=1) + 1).tolist()):
                ranks[i] = r
        return ranks

    @staticmethod
    def _row_values(x: torch.Tensor, rows, params: list[SamplingParams],
                    *names: str) -> list[torch.Tensor]:
        """For each field name, a tensor of that SamplingParams field for the given rows."""
        return [torch.tensor([getattr(params[i], name) for i in rows], dtype=x.dtype,
                             device=x.device) for name in names]

    def _sample(self, x: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> torch.Tensor:
        """Filter the (non-greedy) rows of ``x`` and draw one token from each."""
        vocab = x.shape[1]
        # Each filter runs only on the rows that ask for it (an "off" value is a no-op).
        filters = [(apply_temperature, "temperature", lambda p: p.temperature != 1.0),
                   (apply_min_p, "min_p", lambda p: p.min_p > 0.0),
                   (apply_top_k, "top_k", lambda p: 0 < p.top_k < vocab),
                   (self.top_p_fn, "top_p", lambda p: p.top_p < 1.0)]
        for fn, name, wanted in filters:
            rows = [j for j, p in enumerate(params) if wanted(p)]
            if rows:
                x = _on_rows(x, rows, fn, *self._row_values(x, rows, params, name))
        probs = x.softmax(dim=-1)
        noise = _exponential_noise(generators, vocab, x, self.generator)
        return probs.div_(noise).argmax(dim=-1)

    @staticmethod
    def _top_logprobs(logits: torch.Tensor, logsumexp: torch.Tensor, tokens: list[int],
                      token_logprobs: list[float], params: list[SamplingParams]
                      ) -> list[dict[int, float] | None]:
        """For rows with ``params.logprobs = N``: the sampled token and the N most likely."""
        out: list[dict[int, float] | None] = [None] * len(params)
        rows = [i for i, p in enumerate(params) if p.logprobs is not None]
        if not rows:
            return out
        num_top = min(max(params[i].logprobs for i in rows), logits.shape[1])
        top_ids, top_values = [[] for _ in rows], [[] for _ in rows]
        if num_top > 0:
            index = torch.tensor(rows, device=logits.device)
            chosen = logits if len(rows) == len(params) else logits[index]
            values, ids = chosen.topk(num_top, dim=-1)
            top_ids, top_values = ids.tolist(), (values - logsumexp[index, None]).tolist()
        for j, i in enumerate(rows):
            n = params[i].logprobs
            # The sampled token first (as vLLM lists it), then the top n by rank.
            out[i] = {tokens[i]: token_logprobs[i], **dict(zip(top_ids[j][:n], top_values[j][:n]))}
        return out
