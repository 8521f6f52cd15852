"""Logits processors: small pure functions that reshape a batch of logits.

Each one takes a ``[B, V]`` float tensor of logits (one row per request, one column per
vocabulary token) plus per-row parameters, and returns a NEW ``[B, V]`` tensor; the input
is never changed. A token that is filtered out gets ``-inf``, so softmax gives it
probability 0 and it can never be sampled.

The Sampler calls them in vLLM v1's order: penalties, min_tokens, temperature, min_p,
top-k, top-p. Each function is correct on any row; the Sampler only skips the ones no
row needs, because on a CPU every pass over ``B * V`` numbers costs real time.
"""
from __future__ import annotations

import itertools
from collections.abc import Collection

import numpy as np
import torch

NEG_INF = float("-inf")


def _flat_positions(token_ids: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """``row * vocab_size + token`` for every token of every row: where each (row, token)
    pair sits in the flattened ``[B, V]`` logits."""
    lengths = [len(ids) for ids in token_ids]
    # numpy reads a long Python list ~5x faster than torch.tensor does.
    flat = np.fromiter(itertools.chain.from_iterable(token_ids), dtype=np.int64, count=sum(lengths))
    flat = torch.from_numpy(flat).to(device)
    lengths = torch.tensor(lengths, device=device)
    rows = torch.repeat_interleave(torch.arange(len(token_ids), device=device), lengths)
    return rows * vocab_size + flat


def apply_penalties(logits: torch.Tensor, prompt_ids: list[list[int]],
                    output_ids: list[list[int]], repetition: torch.Tensor,
                    frequency: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """vLLM's three penalties, which make tokens the request has already seen less likely.

    - ``repetition`` [B] (1 = off): for every token seen in the prompt OR the output, a
      positive logit is divided by it and a negative one multiplied by it (so with a
      penalty > 1 the token always loses, whatever the sign of its logit).
    - ``frequency`` [B] (0 = off): subtract ``frequency * (times generated so far)``.
    - ``presence`` [B] (0 = off): subtract ``presence`` once if the token was generated.

    Frequency and presence count only output tokens; ``prompt_ids`` is used only by the
    repetition penalty. A row with no penalty may pass empty id lists.

    A request has seen a few hundred distinct tokens out of a vocab of ~50k, so instead of
    building dense [B, V] count tensors we change only the (row, token) entries it has seen.
    """
    _, vocab = logits.shape
    repetition = repetition.to(logits.device, logits.dtype)
    frequency = frequency.to(logits.device, logits.dtype)
    presence = presence.to(logits.device, logits.dtype)
    flat = logits.reshape(-1)
    out = flat.clone()
    # Each generated (row, token) once, with how many times it was generated.
    generated, counts = torch.unique(_flat_positions(output_ids, vocab, logits.device),
                                     return_counts=True)
    if bool((repetition != 1).any()):  # the prompt tokens are needed only here
        # A token seen twice is written twice with the same value, so no unique() needed.
        seen = torch.cat([generated, _flat_positions(prompt_ids, vocab, logits.device)])
        value, rep = flat[seen], repetition[seen // vocab]
        out[seen] = torch.where(value > 0, value / rep, value * rep)
    rows = generated // vocab
    out[generated] = out[generated] - frequency[rows] * counts.to(logits.dtype) - presence[rows]
    return out.view_as(logits)


def apply_min_tokens(logits: torch.Tensor, num_output_tokens: list[int], min_tokens: list[int],
                     stop_ids: list[Collection[int]]) -> torch.Tensor:
    """Forbid stopping too early: while row i has produced fewer than ``min_tokens[i]`` tokens,
    the ids in ``stop_ids[i]`` (EOS and the request's stop token ids) get ``-inf``."""
    vocab = logits.shape[1]
    rows, cols = [], []
    for i, (done, minimum, ids) in enumerate(zip(num_output_tokens, min_tokens, stop_ids)):
        if done < minimum:
            kept = [t for t in ids if t < vocab]  # an id outside the vocab can't be sampled anyway
            rows += [i] * len(kept)
            cols += kept
    if not rows:
        return logits
    index = (torch.tensor(rows, device=logits.device), torch.tensor(cols, device=logits.device))
    return logits.index_put(index, torch.tensor(NEG_INF, dtype=logits.dtype, device=logits.device))


def apply_temperature(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """Divide each row by its temperature [B]: < 1 sharpens the distribution, > 1 flattens it.

    Greedy rows (temperature 0) must not come here; the Sampler takes their argmax instead.
    """
    return logits / temperature.to(logits.device, logits.dtype)[:, None]


def apply_min_p(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p * (probability of the top token)``.

    ``p_i < min_p * p_max`` is the same as ``logit_i - logit_max < log(min_p)`` (the softmax
    denominator cancels), so no softmax is needed. ``min_p = 0`` gives ``log 0 = -inf`` and
    drops nothing.
    """
    max_logit = logits.amax(dim=-1, keepdim=True)
    cutoff = max_logit + torch.log(min_p.to(logits.device, logits.dtype))[:, None]
    return logits.masked_fill(logits < cutoff, NEG_INF)


def apply_top_k(logits: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Keep the ``top_k`` [B] largest logits of each row (0 = off).

    We find each row's k-th largest value and keep every logit >= it, so a tie with the
    k-th value keeps all the tied tokens (more than k, but deterministic).
    """
    vocab = logits.shape[1]
    top_k = top_k.to(device=logits.device, dtype=torch.long)
    k = top_k.clamp(1, vocab)
    largest = logits.topk(int(k.max()), dim=-1).values  # sorted, descending
    kth = largest.gather(1, (k - 1)[:, None])
    kth = kth.masked_fill((top_k <= 0)[:, None], NEG_INF)  # off: a cutoff that drops nothing
    return logits.masked_fill(logits < kth, NEG_INF)


def apply_top_p(logits: torch.Tensor, top_p: torch.Tensor, first_k: int = 256) -> torch.Tensor:
    """Nucleus sampling: keep the smallest set of most likely tokens whose total probability
    reaches ``top_p`` [B] (1 = off). The top token is always kept.

    Sorting a whole 50k vocabulary is slow on a CPU, and the nucleus is usually small, so we
    sort only the ``first_k`` most likely tokens; a row whose nucleus does not fit in them
    tries again with 16x more (at most the whole vocab). The result is the same as one full
    sort. As in ``apply_top_k``, tokens tied with the last kept one are kept too.
    """
    batch, vocab = logits.shape
    top_p = top_p.to(logits.device)
    probs = logits.softmax(dim=-1)
    cutoff = torch.zeros(batch, dtype=probs.dtype, device=probs.device)  # 0 keeps everything
    todo = torch.nonzero(top_p < 1).flatten()
    k = min(first_k, vocab)
    while todo.numel() > 0:
        top = probs[todo].topk(k, dim=-1).values  # sorted, descending
        mass_before = top.cumsum(dim=-1) - top  # probability of the tokens ranked above
        # Keep a token while the ones above it have not yet reached top_p (so >= 1 is kept).
        num_kept = (mass_before < top_p[todo, None].to(top.dtype)).sum(dim=-1)
        found = (num_kept < k) | (k == vocab)  # else the nucleus may go on past the k-th
        cutoff[todo[found]] = top[found].gather(1, (num_kept[found] - 1)[:, None]).squeeze(1)
        todo, k = todo[~found], min(16 * k, vocab)
    return logits.masked_fill(probs < cutoff[:, None], NEG_INF)
