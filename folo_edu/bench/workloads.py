"""Benchmark workloads: lists of (prompt token ids, number of tokens to generate).

Prompts are random token ids from the vocabulary, special tokens excluded, drawn
with a fixed seed, so every run and both engines see exactly the same requests.
Generation is greedy with EOS ignored, so each request produces exactly
``max_tokens`` tokens on both sides and the work is identical.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    max_tokens: int

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_token_ids)


def special_token_ids(tokenizer, hf_config=None) -> set[int]:
    """Ids a random prompt must not contain: the tokenizer's special and added tokens,
    and the bos/eos/pad/unk ids of the config."""
    ids: set[int] = set()
    if tokenizer is not None:
        ids.update(getattr(tokenizer, "all_special_ids", []) or [])
        ids.update(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    if hf_config is not None:
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            value = getattr(hf_config, name, None)
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(v for v in value if isinstance(v, int))
    return ids


def special_token_ids_of(path: str, hf_config) -> set[int]:
    """``special_token_ids`` for the checkpoint folder at ``path``: its tokenizer's ids if
    it has a tokenizer, else only the config's bos/eos/pad/unk ids."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001  (a folder without a tokenizer: the config's ids)
        tokenizer = None
    return special_token_ids(tokenizer, hf_config)


def _random_ids(rng: random.Random, n: int, vocab_size: int, exclude: set[int]) -> list[int]:
    out = []
    while len(out) < n:
        t = rng.randrange(vocab_size)
        if t not in exclude:
            out.append(t)
    return out


def single_workload(vocab_size: int, exclude: set[int], num_prompts: int = 5,
                    min_prompt_len: int = 64, max_prompt_len: int = 200,
                    new_tokens: int = 128, seed: int = 0) -> list[BenchRequest]:
    """M1: ``num_prompts`` prompts with lengths evenly spread over [min, max], each
    generating ``new_tokens`` tokens (5 prompts: 64, 98, 132, 166, 200 tokens)."""
    rng = random.Random(seed)
    if num_prompts == 1:
        lengths = [min_prompt_len]
    else:
        step = (max_prompt_len - min_prompt_len) / (num_prompts - 1)
        lengths = [round(min_prompt_len + i * step) for i in range(num_prompts)]
    return [BenchRequest(_random_ids(rng, n, vocab_size, exclude), new_tokens) for n in lengths]


def offline_workload(vocab_size: int, exclude: set[int], num_requests: int = 64,
                     prompt_len_range: tuple[int, int] = (16, 256),
                     output_len_range: tuple[int, int] = (16, 256),
                     seed: int = 0) -> list[BenchRequest]:
    """M2: prompt and output lengths each uniform over their (inclusive) range."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(num_requests):
        p = rng.randint(*prompt_len_range)
        o = rng.randint(*output_len_range)
        reqs.append(BenchRequest(_random_ids(rng, p, vocab_size, exclude), o))
    return reqs


def describe(reqs: list[BenchRequest]) -> dict:
    """Summary of a workload for the result file (the full lengths lists included)."""
    p = [r.prompt_len for r in reqs]
    o = [r.max_tokens for r in reqs]
    return {"num_requests": len(reqs), "prompt_lens": p, "output_lens": o,
            "total_prompt_tokens": sum(p), "total_output_tokens": sum(o)}
