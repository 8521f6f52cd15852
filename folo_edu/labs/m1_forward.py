"""Checks for notebooks/03_forward_pass_and_kv_cache.ipynb (milestone M1).

The notebook 03 lab: the learner writes ``decode_step``, the attention of one decode
step with a KV cache (store this token's K and V at its slot, attend over the cached
ones). ``DecodeLabBackend`` is an attention backend whose decode path is that function;
``check_decode_step`` runs it on synthetic cases, then inside a real engine on a tiny
float64 Llama (``model.set_attention_backend``, the seam every backend uses), whose
greedy tokens must equal transformers'.
"""
from __future__ import annotations

import time

import torch

from folo_edu.attention.common import causal_mask, gather_kv, write_kv
from folo_edu.attention.naive import NaiveBackend, naive_attention
from folo_edu.labs import LabCheckFailed, not_answered, report_pass

WHAT_DECODE = "decode_step (one decode step of attention with a KV cache)"


def _attend(q, k, v, scale):
    """q [H, D] over k, v [S, KVH, D] -> [H, D], the reference (naive_attention)."""
    mask = torch.ones(1, k.shape[0], dtype=torch.bool, device=q.device)
    return naive_attention(q[None], k, v, mask, scale)[0]


def _wrong_outputs(q, k_cache, v_cache, pos, scale):
    """Outputs of common wrong decode steps (given a correctly written cache), with the
    hint that names each."""
    h, kvh = q.shape[0], k_cache.shape[1]
    keys, values = k_cache[:pos + 1], v_cache[:pos + 1]
    wrong = [
        (_attend(q, keys, values, 1.0),
         "scale the scores by 1 / sqrt(head_dim) before the softmax"),
        (_attend(q, keys, values, scale ** 2),
         "the scale is 1 / sqrt(head_dim), not 1 / head_dim"),
        (_attend(q, k_cache, v_cache, scale),
         "you attend over the whole cache; only slots 0..pos hold this sequence's tokens "
         "(the rest are empty or stale): use k_cache[:pos + 1]"),
        (_attend(q, keys[-1:], values[-1:], scale),
         "the new token attends to every cached token 0..pos, not only to itself"),
    ]
    if pos > 0:
        wrong.append((_attend(q, keys[:-1], values[:-1], scale),
                      "the new token must attend to itself too: slots 0..pos inclusive "
                      "(k_cache[:pos + 1], not k_cache[:pos])"))
    if h != kvh and h % kvh == 0:
        group = h // kvh
        rep = lambda x: x.repeat(1, group, 1)  # noqa: E731
        mask = torch.ones(1, pos + 1, dtype=torch.bool, device=q.device)
        wrong.append((naive_attention(q[None], rep(keys), rep(values), mask, scale)[0],
                      "query head h must use KV head h // (H // KVH): "
                      "repeat_interleave(group, dim=1), not repeat"))
    return wrong


def _check_one_decode(fn, q, k, v, k_cache, v_cache, pos, scale, where) -> torch.Tensor:
    """Run ``fn`` on one decode step; raise LabCheckFailed with a hint if its cache write
    or its output is wrong; return its output."""
    before_k, before_v = k_cache.clone(), v_cache.clone()
    try:
        out = fn(q.clone(), k.clone(), v.clone(), k_cache, v_cache, pos)
    except LabCheckFailed:
        raise
    except Exception as e:  # the learner's code failed: say where, briefly
        raise LabCheckFailed(f"{WHAT_DECODE} {where}: raised {type(e).__name__}: {e}") from None
    head_dim = q.shape[-1]
    ok_k = torch.equal(k_cache[pos], k) and torch.equal(v_cache[pos], v)
    others = torch.ones(k_cache.shape[0], dtype=torch.bool)
    others[pos] = False
    untouched = (torch.equal(k_cache[others], before_k[others])
                 and torch.equal(v_cache[others], before_v[others]))
    if not (ok_k and untouched):
        if torch.equal(k_cache, before_k):
            hint = ("k_cache[pos] does not hold this token's key after your function "
                    "returned: write into the cache in place (k_cache[pos] = k, and the "
                    "same for v), don't build a new tensor")
        elif pos + 1 < k_cache.shape[0] and torch.equal(k_cache[pos + 1], k):
            hint = "you wrote K at slot pos + 1; this token's slot is pos (positions start at 0)"
        elif pos > 0 and torch.equal(k_cache[pos - 1], k):
            hint = "you wrote K at slot pos - 1, over the previous token; write at slot pos"
        elif ok_k:
            hint = "you changed other slots of the cache; write only slot pos"
        else:
            hint = "after the call, k_cache[pos] must equal k and v_cache[pos] must equal v"
        raise LabCheckFailed(f"{WHAT_DECODE} {where}: {hint}")
    if not isinstance(out, torch.Tensor) or out.shape != q.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LabCheckFailed(f"{WHAT_DECODE} {where}: returned {got}; expected a tensor "
                             f"shaped like q, {tuple(q.shape)} ([H, D])")
    out = out.to(q.dtype)
    expected = _attend(q, k_cache[:pos + 1], v_cache[:pos + 1], scale)
    close = lambda a, b: torch.allclose(a, b, rtol=1e-6, atol=1e-9)  # noqa: E731
    if not close(out, expected):
        hint = next((text for ref, text in _wrong_outputs(q, k_cache, v_cache, pos, scale)
                     if close(out, ref)),
                    "scores = q . k / sqrt(D) for each head over slots 0..pos, softmax, "
                    "then the weighted sum of v")
        raise LabCheckFailed(f"{WHAT_DECODE} {where}: wrong output; {hint}")
    return out


def _synthetic_decode_cases():
    """(H, KVH, D, cache slots, pos): GQA 3, MHA, MQA, the first position. The slots after
    pos hold random 'stale' values, as a reused cache does."""
    g = torch.Generator().manual_seed(0)
    for h, kvh, d, slots, pos in [(6, 2, 16, 10, 4), (3, 3, 8, 12, 6), (8, 1, 4, 16, 9),
                                  (4, 2, 8, 6, 0)]:
        r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
        yield r(h, d), r(kvh, d), r(kvh, d), r(slots, kvh, d), r(slots, kvh, d), pos


class DecodeLabBackend(NaiveBackend):
    """The naive backend, except that every decode token goes through ``decode_step``.

    For a decode the backend does NOT store K/V first (``write_kv`` does nothing): the
    learner's function does, into the sequence's own row of the contiguous cache (one
    block of max_model_len slots per request, so slot = position). Prefills are stored
    and attended as in the naive backend. With ``check=True`` each call is checked
    against the reference and a wrong one raises LabCheckFailed with a hint.
    """

    name = "decode-lab"

    def __init__(self, decode_step, check: bool = True):
        self.decode_step, self.check, self.calls = decode_step, check, 0

    def write_kv(self, k_cache, v_cache, k, v, slot_mapping) -> None:
        pass  # forward() stores the prefill tokens; decode_step stores its own token

    def forward(self, q, k_cache, v_cache, meta, scale: float, k, v):
        out = torch.empty_like(q)
        block_size = k_cache.shape[1]
        for i in range(meta.num_seqs):
            start, qlen, slen = meta.query_start_loc[i], meta.query_lens[i], meta.seq_lens[i]
            rows = slice(start, start + qlen)
            if i < meta.num_decodes and qlen == 1:
                block = int(meta.block_tables[i, 0])
                if slen > block_size or int(meta.slot_mapping[start]) != block * block_size + slen - 1:
                    raise ValueError("DecodeLabBackend needs kv_cache='contiguous' (one block "
                                     "of max_model_len slots per request)")
                args = (q[start], k[start], v[start], k_cache[block], v_cache[block], slen - 1)
                self.calls += 1
                if self.check:
                    out[start] = _check_one_decode(self.decode_step, *args, scale,
                                                   f"(engine decode at position {slen - 1})")
                else:
                    out[start] = self.decode_step(*args)
                continue
            write_kv(k_cache, v_cache, k[rows], v[rows], meta.slot_mapping[rows])
            keys = gather_kv(k_cache, meta.block_tables[i], slen)
            values = gather_kv(v_cache, meta.block_tables[i], slen)
            out[rows] = naive_attention(q[rows], keys, values,
                                        causal_mask(qlen, slen, q.device), scale)
        return out


def decode_lab_llm(model_dir, decode_step, check: bool = True, dtype: str = "float64",
                   max_model_len: int = 64, max_num_seqs: int = 4):
    """An ``LLM`` on ``model_dir`` whose decode attention is ``decode_step``: a contiguous
    KV cache, and a ``DecodeLabBackend`` put into the model with
    ``model.set_attention_backend`` (the same call that switches any backend)."""
    from folo_edu import LLM

    llm = LLM(str(model_dir), dtype=dtype, skip_tokenizer_init=True, kv_cache="contiguous",
              max_model_len=max_model_len, num_kv_blocks=max_num_seqs,
              max_num_seqs=max_num_seqs, attention_backend="naive", seed=0)
    llm.llm_engine.model_runner.model.set_attention_backend(DecodeLabBackend(decode_step, check))
    return llm


def _transformers_greedy(model_dir, prompts, num_tokens) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    from folo_edu.labs.m1_sampling import _quiet_hf

    with _quiet_hf():
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    result = []
    with torch.no_grad():
        for ids in prompts:
            ids = list(ids)
            for _ in range(num_tokens):
                ids.append(int(hf(torch.tensor([ids])).logits[0, -1].argmax()))
            result.append(ids[len(ids) - num_tokens:])
    return result


def check_decode_step(fn) -> bool:
    """Check ``fn(q [H, D], k [KVH, D], v [KVH, D], k_cache [L, KVH, D], v_cache, pos)
    -> [H, D]``: it stores k, v at slot ``pos`` of the sequence's cache and returns the
    new token's attention over slots 0..pos (grouped-query heads). First on synthetic
    cases, then inside the engine on a tiny float64 Llama, where every call is checked
    and the greedy tokens must equal transformers'."""
    what = WHAT_DECODE
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    q, k, v, kc, vc, pos = next(_synthetic_decode_cases())
    try:
        stub = fn(q, k, v, kc, vc, pos) is None  # the stub: `...  # your code here`
    except Exception:
        stub = False  # _check_one_decode reports it below
    if stub:
        return not_answered(what)
    cases = 0
    for q, k, v, kc, vc, pos in _synthetic_decode_cases():
        h, d = q.shape
        _check_one_decode(fn, q, k, v, kc, vc, pos, d ** -0.5,
                          f"({h} query heads, {k.shape[0]} KV heads, head_dim {d}, "
                          f"position {pos})")
        cases += 1

    from folo_edu.labs.m1_sampling import tiny_lab_model
    from folo_edu.sampling_params import SamplingParams

    model_dir, num_tokens = tiny_lab_model(), 10
    prompts = [[5], [9, 80, 3, 41], [17, 4, 200, 51, 6, 33, 90, 12, 7]]
    llm = decode_lab_llm(model_dir, fn)
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts],
                        SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True),
                        use_tqdm=False)
    ours = [list(o.outputs[0].token_ids) for o in outs]
    calls = llm.llm_engine.model_runner.model.layers[0].self_attn.backend.calls
    if ours != _transformers_greedy(model_dir, prompts, num_tokens):
        raise LabCheckFailed(f"{what}: every decode step matched the reference, but the "
                             "engine's greedy tokens differ from transformers'; run the "
                             "cell again, and if it persists report it")
    return report_pass(f"{what} agrees with naive attention on {cases} synthetic cases and "
                       f"{calls} decode calls in the engine, and the engine with it inside "
                       f"generated the same {sum(map(len, ours))} greedy tokens as "
                       "transformers")


def time_decode_steps(model_dir, decode_step, prompt_len: int = 16, num_tokens: int = 200,
                      dtype: str = "float32") -> dict[str, list]:
    """Seconds of each engine decode step of one request when ``decode_step`` is the
    decode attention (unchecked): {"context": [...], "seconds": [...]}."""
    from folo_edu.sampling_params import SamplingParams

    llm = decode_lab_llm(model_dir, decode_step, check=False, dtype=dtype,
                         max_model_len=prompt_len + num_tokens + 1, max_num_seqs=1)
    engine = llm.llm_engine
    engine.add_request("0", {"prompt_token_ids": list(range(3, 3 + prompt_len))},
                       SamplingParams(temperature=0, max_tokens=num_tokens, ignore_eos=True))
    engine.step()  # the prefill
    context, seconds = [], []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        seconds.append(time.perf_counter() - start)
        context.append(prompt_len + len(seconds))
    return {"context": context, "seconds": seconds}


def check_causal_mask(fn) -> bool:
    """Check ``fn(query_len, seq_len) -> bool [query_len, seq_len]``: which keys each of
    the query_len NEW tokens may see when seq_len - query_len tokens are already cached."""
    what = "causal mask with a KV cache"
    if fn is None:
        return not_answered(what)
    if not callable(fn):
        raise LabCheckFailed(f"{what}: {fn!r} is not a function; pass the function itself")
    cases = [(4, 4), (1, 6), (3, 8), (2, 2)]
    for q, s in cases:
        case = f"{what} for {q} new tokens after {s - q} cached"
        got = torch.as_tensor(fn(q, s))
        if got.shape != (q, s):
            raise LabCheckFailed(f"{case}: returned shape {tuple(got.shape)}; expected "
                                 f"({q}, {s}): one row per new token, one column per key")
        if got.dtype != torch.bool:
            if not bool(((got == 0) | (got == 1)).all()):
                raise LabCheckFailed(f"{case}: expected True/False (or 1/0) values, "
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
        raise LabCheckFailed(f"{case}: wrong mask; {hint}")
    return report_pass(f"{what} agrees with folo_edu.attention.common.causal_mask on "
                       f"{len(cases)} cases")
