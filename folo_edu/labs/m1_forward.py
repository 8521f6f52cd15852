"""Checks for notebooks/03_forward_pass_and_kv_cache.ipynb (milestone M1)."""
from __future__ import annotations

import torch

from folo_edu.attention.common import causal_mask
from folo_edu.attention.naive import naive_attention
from folo_edu.labs import not_answered, report_pass


def _decode_cases():
    """(num_heads, num_kv_heads, head_dim, cached tokens): MHA, GQA 2 and 3, one token."""
    g = torch.Generator().manual_seed(0)
    for h, kvh, d, s in [(4, 2, 8, 5), (6, 2, 16, 1), (3, 3, 8, 7), (8, 2, 4, 9)]:
        q = torch.randn(h, d, generator=g, dtype=torch.float64)
        k = torch.randn(s, kvh, d, generator=g, dtype=torch.float64)
        v = torch.randn(s, kvh, d, generator=g, dtype=torch.float64)
        yield q, k, v


def _reference(q, k, v, scale):
    mask = torch.ones(1, k.shape[0], dtype=torch.bool)
    return naive_attention(q[None], k, v, mask, scale)[0]


def check_decode_attention(fn) -> bool:
    """Check ``fn(q [H, D], k [S, KVH, D], v [S, KVH, D]) -> [H, D]``: the attention of
    ONE new token over the S keys and values in the cache (itself included), with
    grouped-query heads, against ``folo_edu.attention.naive.naive_attention``."""
    what = "decode-step attention over the KV cache"
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise AssertionError(f"{what}: {fn!r} is not a function; pass the function itself")
    count = 0
    for q, k, v in _decode_cases():
        h, d = q.shape
        s, kvh, _ = k.shape
        case = f"{what} ({h} query heads, {kvh} KV heads, head_dim {d}, {s} cached tokens)"
        try:
            got = torch.as_tensor(fn(q.clone(), k.clone(), v.clone()), dtype=torch.float64)
        except RuntimeError as e:
            raise AssertionError(f"{case}: raised {e}; each query head h uses KV head "
                                 f"h // (H // KVH) (torch.repeat_interleave on dim 1)") from e
        if got.shape != q.shape:
            raise AssertionError(f"{case}: returned shape {tuple(got.shape)}; expected "
                                 f"{tuple(q.shape)} ([H, D], one output per query head)")
        expected = _reference(q, k, v, d ** -0.5)
        count += 1
        if torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
            continue
        hints = [
            (_reference(q, k, v, 1.0), "scale the scores by 1 / sqrt(head_dim) before softmax"),
            (_reference(q, k.repeat(1, h // kvh, 1), v.repeat(1, h // kvh, 1), d ** -0.5)
             if h % kvh == 0 else None,
             "query head h must use KV head h // (H // KVH): repeat_interleave, not repeat"),
            (v[-1].repeat_interleave(h // kvh, dim=0),
             "the new token attends to every cached token, not only itself: no causal mask "
             "is needed for the one query of a decode step"),
            (v[0].repeat_interleave(h // kvh, dim=0),
             "the new token is the LAST position; it attends to all S cached tokens"),
        ]
        hint = next((text for ref, text in hints
                     if ref is not None and ref.shape == got.shape
                     and torch.allclose(got, ref, rtol=1e-6, atol=1e-9)),
                    "scores = k . q / sqrt(D) per head, softmax over the S cached tokens, "
                    "then the weighted sum of v")
        raise AssertionError(f"{case}: wrong values; {hint}")
    return report_pass(f"{what} agrees with naive_attention on {count} cases")


def check_causal_mask(fn) -> bool:
    """Check ``fn(query_len, seq_len) -> bool [query_len, seq_len]``: which keys each of
    the query_len NEW tokens may see when seq_len - query_len tokens are already cached."""
    what = "causal mask with a KV cache"
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise AssertionError(f"{what}: {fn!r} is not a function; pass the function itself")
    cases = [(4, 4), (1, 6), (3, 8), (2, 2)]
    for q, s in cases:
        case = f"{what} for {q} new tokens after {s - q} cached"
        got = torch.as_tensor(fn(q, s))
        if got.shape != (q, s):
            raise AssertionError(f"{case}: returned shape {tuple(got.shape)}; expected "
                                 f"({q}, {s}): one row per new token, one column per key")
        if got.dtype != torch.bool:
            if not bool(((got == 0) | (got == 1)).all()):
                raise AssertionError(f"{case}: expected True/False (or 1/0) values, "
                                     f"got dtype {got.dtype}")
            got = got.bool()
        expected = causal_mask(q, s, "cpu")
        itself = torch.zeros(q, s, dtype=torch.bool)
        itself[torch.arange(q), torch.arange(q) + s - q] = True  # each query's own position
        if torch.equal(got, expected):
            continue
        if torch.equal(got, torch.ones(q, s, dtype=torch.bool).tril()):
            hint = ("the new tokens are the LAST query_len positions: query i sits at "
                    "position seq_len - query_len + i and sees keys 0..that position")
        elif torch.equal(got, expected & ~itself):
            hint = "a token may attend to itself: use <=, not <"
        elif torch.equal(got, ~expected):
            hint = "True must mean 'may attend' (the key is at or before the query)"
        else:
            hint = "key j is visible to query i when j <= seq_len - query_len + i"
        raise AssertionError(f"{case}: wrong mask; {hint}")
    return report_pass(f"{what} agrees with folo_edu.attention.common.causal_mask on "
                       f"{len(cases)} cases")
