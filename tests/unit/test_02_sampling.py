"""Tests for the sampler (folo_edu/sample): processors, distributions, seeds, logprobs."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from folo_edu.sample import (Sampler, SamplingMetadata, apply_min_p, apply_min_tokens,
                             apply_penalties, apply_temperature, apply_top_k, apply_top_p,
                             compute_logprobs, make_generator)
from folo_edu.sampling_params import SamplingParams

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")]
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]

# A small vocab whose probabilities (softmax) are about
# [.403, .244, .148, .090, .055, .033, .020, .007].
LOGITS8 = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0], dtype=torch.float64)
NUM_SAMPLES = 20_000
P_THRESHOLD = 1e-3


def make_meta(params, prompts=None, outputs=None, generators=None, eos=None) -> SamplingMetadata:
    """Metadata for len(params) rows with empty histories and no seeds unless given."""
    rows = len(params)
    return SamplingMetadata(  # the Sampler only reads these, so rows may share one list
        params=list(params),
        prompt_token_ids=prompts or [[]] * rows,
        output_token_ids=outputs or [[]] * rows,
        generators=generators or [None] * rows,
        eos_token_ids=eos or [set()] * rows,
    )


def seeded_meta(params, logits) -> SamplingMetadata:
    """Metadata with a fresh generator for every row whose params have a seed."""
    gens = [None if p.seed is None else make_generator(p.seed, logits.device) for p in params]
    return make_meta(params, generators=gens)


# ---------------------------------------------------------------------------------------
# Distributions: sampled frequencies match the exact filtered, renormalized distribution.
# ---------------------------------------------------------------------------------------

def reference_probs(logits, temperature=1.0, min_p=0.0, top_k=0, top_p=1.0) -> np.ndarray:
    """The distribution to expect, worked out independently with numpy and a full sort."""
    scaled = logits.numpy() / temperature
    p = np.exp(scaled - scaled.max())
    p /= p.sum()
    keep = p >= min_p * p.max()
    if top_k:
        keep &= np.argsort(np.argsort(-p, kind="stable"), kind="stable") < top_k  # rank < k
    p = np.where(keep, p, 0.0)
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cumulative = np.cumsum(p[order])
        size = int(np.searchsorted(cumulative, top_p)) + 1  # first prefix with mass >= top_p
        kept = np.zeros_like(p)
        kept[order[:size]] = p[order[:size]]
        p = kept / kept.sum()
    return p


@functools.lru_cache(maxsize=None)
def _counts(options: tuple, dtype: torch.dtype, device: str) -> np.ndarray:
    return sample_counts(SamplingParams(**dict(options)), LOGITS8.to(dtype), device=device)


def counts_for(options: dict, dtype=torch.float64, device="cpu") -> np.ndarray:
    """sample_counts for SamplingParams(**options), drawn once and reused by the controls."""
    return _counts(tuple(sorted(options.items())), dtype, device).copy()


def sample_counts(params: SamplingParams, logits=LOGITS8, n=NUM_SAMPLES, seed=1234,
                  device="cpu") -> np.ndarray:
    """Draw n tokens (one row per draw, in one batch) and count each token.

    Every 1000th row has its own seeded generator, so both ways of drawing the noise
    (per-row generators and the shared global draw) are in the counts.
    """
    torch.manual_seed(seed)
    batch = logits.repeat(n, 1).to(device)
    gens = [make_generator(seed + i, device) if i % 1000 == 0 else None for i in range(n)]
    out = Sampler()(batch, make_meta([params] * n, generators=gens))
    return np.bincount(out.token_ids, minlength=logits.shape[0])


def chisq_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Chi-square goodness-of-fit p-value; 0 if a probability-0 token was ever drawn."""
    if counts[probs == 0].sum() > 0:
        return 0.0
    nonzero = probs > 0
    return chisquare(counts[nonzero], probs[nonzero] * counts.sum()).pvalue


@pytest.mark.parametrize("options", [
    dict(temperature=1.0),
    dict(temperature=0.7),
    dict(temperature=1.5),
    dict(top_k=3),
    dict(top_p=0.7),
    dict(min_p=0.2),
    # top_p then works on what min_p or top_k left, renormalized (else it would keep 3).
    dict(temperature=0.8, min_p=0.2, top_k=6, top_p=0.8),
    dict(temperature=0.8, min_p=0.01, top_k=3, top_p=0.8),
], ids=str)
def test_sampling_matches_exact_distribution(options):
    expected = reference_probs(LOGITS8, **options)
    counts = counts_for(options)
    assert counts.sum() == NUM_SAMPLES
    assert chisq_pvalue(counts, expected) > P_THRESHOLD


@pytest.mark.parametrize("device, dtype", [
    ("cpu", torch.float32),
    pytest.param("cuda", torch.float32, marks=CUDA),
    pytest.param("cuda", torch.float64, marks=CUDA)])
def test_sampling_distribution_on_device(device, dtype):
    # The tests above use float64 logits on the CPU.
    options = dict(temperature=0.8, min_p=0.2, top_k=6, top_p=0.9)
    counts = counts_for(options, dtype, device)
    assert chisq_pvalue(counts, reference_probs(LOGITS8, **options)) > P_THRESHOLD


def test_reference_filters_do_filter():
    # Guard against a vacuous test: each filter above really removes tokens.
    assert (reference_probs(LOGITS8, top_k=3) > 0).sum() == 3
    assert (reference_probs(LOGITS8, top_p=0.7) > 0).sum() == 3
    assert (reference_probs(LOGITS8, min_p=0.2) > 0).sum() == 4
    assert (reference_probs(LOGITS8, temperature=0.8, min_p=0.2) > 0).sum() == 3
    assert (reference_probs(LOGITS8, temperature=0.8, min_p=0.2, top_k=6, top_p=0.8) > 0).sum() == 2
    assert (reference_probs(LOGITS8, temperature=0.8, top_p=0.8) > 0).sum() == 3


@pytest.mark.parametrize("options, wrong", [
    (dict(temperature=0.7), dict(temperature=1.0)),  # temperature ignored
    (dict(top_k=3), dict()),  # filtered but not renormalized: the mass stays on the tail
    (dict(top_p=0.7), dict(top_k=2)),  # nucleus one token too small
    (dict(temperature=0.7), dict(temperature=0.65)),  # a small difference is still seen
], ids=str)
def test_chisquare_rejects_a_wrong_distribution(options, wrong):
    counts = counts_for(options)  # the very counts that passed above
    assert chisq_pvalue(counts, reference_probs(LOGITS8, **wrong)) < P_THRESHOLD


# ---------------------------------------------------------------------------------------
# Seeds
# ---------------------------------------------------------------------------------------

def _steps(num_steps=8, vocab=1000, rows=6, device="cpu"):
    gen = torch.Generator().manual_seed(99)
    return [(torch.randn(rows, vocab, generator=gen) * 2).to(device) for _ in range(num_steps)]


def _run_steps(params, steps, row_of_step=None) -> list[list[int]]:
    """Sample every step with one Sampler and generators kept across steps."""
    meta = seeded_meta(params, steps[0])
    sampler, tokens = Sampler(), []
    for logits in steps:
        logits = logits[:len(params)] if row_of_step is None else logits[row_of_step]
        tokens.append(sampler(logits, meta).token_ids)
    return tokens


SEEDED_VARIANTS = [
    dict(temperature=1.0),
    dict(temperature=0.7, top_p=0.9),
    dict(temperature=1.2, top_k=40, min_p=0.01),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("options", SEEDED_VARIANTS, ids=str)
def test_same_seed_same_tokens_alone_or_in_a_batch(options, device):
    steps = _steps(device=device)
    mine = SamplingParams(seed=7, **options)
    alone = [t[0] for t in _run_steps([mine], [s[:1] for s in steps])]
    assert alone == [t[0] for t in _run_steps([mine], [s[:1] for s in steps])]

    # The same row (same logits) in the middle of a batch with seeded, unseeded and greedy
    # rows that use other filters.
    others = [SamplingParams(seed=8), SamplingParams(top_p=0.5), SamplingParams(temperature=0),
              SamplingParams(top_k=3, seed=9), SamplingParams(min_p=0.1, repetition_penalty=1.3)]
    batch = others[:2] + [mine] + others[2:]
    order = [1, 2, 0, 3, 4, 5]  # row 0 of each step's logits goes to position 2
    torch.manual_seed(5)
    in_batch = [t[2] for t in _run_steps(batch, steps, row_of_step=order)]
    assert in_batch == alone
    torch.manual_seed(6)  # the global RNG (unseeded rows) does not matter either
    assert [t[2] for t in _run_steps(batch, steps, row_of_step=order)] == alone


def test_different_seeds_give_different_tokens():
    steps = [s[:1] for s in _steps()]
    a = _run_steps([SamplingParams(seed=7)], steps)
    b = _run_steps([SamplingParams(seed=8)], steps)
    assert a != b


def test_make_generator_is_seeded():
    a, b = make_generator(3, "cpu"), make_generator(3, "cpu")
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))


# ---------------------------------------------------------------------------------------
# The processors, one at a time
# ---------------------------------------------------------------------------------------

def test_penalties_change_exactly_the_right_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]] * 4)
    original = logits.clone()
    prompts = [[0, 1]] * 4
    outputs = [[2, 2, 3]] * 4
    rep = torch.tensor([2.0, 1.0, 1.0, 2.0])
    freq = torch.tensor([0.5, 0.0, 0.5, 0.0])
    pres = torch.tensor([0.25, 0.0, 0.25, 0.0])
    out = apply_penalties(logits, prompts, outputs, rep, freq, pres)
    assert torch.equal(logits, original)  # the input is not changed
    # Row 0, all three: prompt tokens 0 and 1 get only the repetition penalty
    # (2 / 2 and -1 * 2); token 2 (generated twice): 0.5 / 2 - 0.5 * 2 - 0.25;
    # token 3 (once): 3 / 2 - 0.5 - 0.25; tokens 4 and 5 were never seen.
    assert out[0].tolist() == [1.0, -2.0, -1.0, 0.75, -2.0, 1.0]
    assert out[1].tolist() == original[1].tolist()  # no penalties: nothing changes
    # Frequency and presence only: the prompt tokens are not touched.
    assert out[2].tolist() == [2.0, -1.0, -0.75, 2.25, -2.0, 1.0]
    # Repetition only: prompt and output tokens alike, once each.
    assert out[3].tolist() == [1.0, -2.0, 0.25, 1.5, -2.0, 1.0]


def test_penalties_with_empty_histories():
    logits = torch.randn(2, 10)
    out = apply_penalties(logits, [[], []], [[], []], torch.full((2,), 1.5),
                          torch.ones(2), torch.ones(2))
    assert torch.equal(out, logits)


def test_penalties_change_the_greedy_choice():
    logits = torch.tensor([[5.0, 4.0, 0.0, 0.0]] * 3)
    params = [SamplingParams(temperature=0, presence_penalty=1.5),
              SamplingParams(temperature=0, repetition_penalty=2.0),
              SamplingParams(temperature=0, frequency_penalty=0.4)]
    meta = make_meta(params, prompts=[[3], [0], [0]], outputs=[[0], [3], [0, 0]])
    # presence: 5 - 1.5 < 4; repetition on a prompt token: 5 / 2 < 4; frequency: 5 - 0.8 > 4.
    assert Sampler()(logits, meta).token_ids == [1, 1, 0]


def test_min_tokens_processor():
    logits = torch.zeros(3, 5)
    out = apply_min_tokens(logits, [0, 2, 1], [2, 2, 0], [{0, 3}, {0}, {1}])
    assert torch.isinf(out[0, [0, 3]]).all() and torch.isfinite(out[0, [1, 2, 4]]).all()
    assert torch.isfinite(out[1:]).all()  # enough tokens already / no min_tokens
    assert torch.equal(logits, torch.zeros(3, 5))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_tokens_blocks_eos_and_stop_ids_then_releases(temperature):
    # EOS (0) is the most likely token, then stop id 1, then 2.
    logits = torch.tensor([[9.0, 8.0, 1.0, -5.0]])
    params = SamplingParams(temperature=temperature, min_tokens=2, stop_token_ids=[1])
    sampler = Sampler()
    for generated in range(3):
        meta = make_meta([params] * 200, outputs=[[2] * generated] * 200, eos=[{0}] * 200)
        tokens = set(sampler(logits.repeat(200, 1), meta).token_ids)
        if generated < 2:
            assert tokens.isdisjoint({0, 1})
        else:
            assert 0 in tokens
    # An empty EOS set (e.g. ignore_eos) still blocks the stop ids.
    meta = make_meta([params.clone(temperature=0)], eos=[set()])
    assert sampler(logits, meta).token_ids == [0]


def test_temperature_processor():
    logits = torch.tensor([[1.0, -2.0], [1.0, -2.0]])
    out = apply_temperature(logits, torch.tensor([0.5, 2.0]))
    assert out.tolist() == [[2.0, -4.0], [0.5, -1.0]]


def test_min_p_processor():
    # probabilities relative to the top token: 1, e^-1, e^-2, e^-3
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]] * 3)
    out = apply_min_p(logits, torch.tensor([0.0, 0.2, 1.0]))
    assert torch.isfinite(out[0]).all()
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]  # e^-2 < 0.2 < e^-1
    assert torch.isfinite(out[2]).tolist() == [True, False, False, False]


def test_top_k_processor_and_zero_disables():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3]] * 4)
    out = apply_top_k(logits, torch.tensor([0, 1, 3, 10]))
    assert torch.equal(out[0], logits[0])  # top_k = 0: off
    assert torch.isfinite(out[1]).tolist() == [False, True, False, False, False]
    assert torch.isfinite(out[2]).tolist() == [False, True, True, True, False]
    assert torch.equal(out[3], logits[3])  # k >= vocab keeps everything
    assert torch.equal(out[2][torch.isfinite(out[2])], logits[2][[1, 2, 3]])  # values kept as is


def test_top_k_keeps_ties():
    out = apply_top_k(torch.tensor([[1.0, 2.0, 2.0, 0.0]]), torch.tensor([1]))
    assert torch.isfinite(out[0]).tolist() == [False, True, True, False]


def test_top_p_always_keeps_the_top_token():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 5.0, 1.0, 0.0]])
    out = apply_top_p(logits, torch.tensor([1e-9, 1e-9]))
    assert torch.isfinite(out[0]).tolist() == [False, True, False, False]
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]  # tied top tokens
    assert torch.equal(apply_top_p(logits, torch.tensor([1.0, 1.0])), logits)  # off


def _reference_top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    probs = logits.double().softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    keep_sorted = (sorted_probs.cumsum(-1) - sorted_probs) < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])  # nuclei of thousands .. a few tokens
def test_top_p_matches_a_full_sort(scale):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5000, generator=gen, dtype=torch.float64) * scale
    top_p = torch.tensor([0.3, 0.8, 0.95, 0.999], dtype=torch.float64)
    out = apply_top_p(logits, top_p)
    for row in range(4):
        expected = _reference_top_p_mask(logits[row:row + 1], top_p[row].item())[0]
        assert torch.equal(torch.isfinite(out[row]), expected)
    # Starting from a tiny first guess forces the "look further" loop; same answer.
    assert torch.equal(apply_top_p(logits, top_p, first_k=2), out)


# ---------------------------------------------------------------------------------------
# Greedy and logprobs
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_greedy_is_argmax(dtype):
    logits = torch.randn(16, 500, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = Sampler()(logits, make_meta([SamplingParams(temperature=0)] * 16))
    assert out.token_ids == logits.float().argmax(-1).tolist()
    expected = compute_logprobs(logits).gather(1, torch.tensor(out.token_ids)[:, None])
    assert np.allclose(out.sampled_logprobs, expected.squeeze(1).tolist(), atol=1e-5)
    assert out.top_logprobs == [None] * 16


def test_compute_logprobs_dtype():
    assert compute_logprobs(torch.zeros(1, 4, dtype=torch.bfloat16)).dtype == torch.float32
    assert compute_logprobs(torch.zeros(1, 4, dtype=torch.float64)).dtype == torch.float64
    assert torch.allclose(compute_logprobs(torch.zeros(1, 4)), torch.full((1, 4), -np.log(4.0)))


def test_logprobs_are_raw_and_include_the_sampled_token():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 50, generator=gen)
    params = [SamplingParams(logprobs=3, temperature=0.5, repetition_penalty=1.5, top_k=20),
              SamplingParams(logprobs=0, temperature=0.3, top_p=0.9),
              SamplingParams(logprobs=5, temperature=0),
              SamplingParams()]
    meta = make_meta(params, prompts=[[1, 2, 3]] * 4, outputs=[[4, 5]] * 4)
    out = Sampler()(logits, meta)
    raw = torch.log_softmax(logits.double(), -1)  # before penalties and filters
    top = logits.topk(5, -1).indices.tolist()
    for row, n in [(0, 3), (1, 0), (2, 5)]:
        token, entries = out.token_ids[row], out.top_logprobs[row]
        assert set(entries) == set(top[row][:n]) | {token}
        assert len(entries) in (n, n + 1)
        assert next(iter(entries)) == token  # the sampled token comes first, as in vLLM
        for tok, value in entries.items():
            assert value == pytest.approx(raw[row, tok].item(), abs=1e-5)
    assert out.top_logprobs[1] == {out.token_ids[1]: out.sampled_logprobs[1]}  # N = 0
    assert out.top_logprobs[3] is None
    for row in range(4):
        assert out.sampled_logprobs[row] == pytest.approx(raw[row, out.token_ids[row]].item(),
                                                          abs=1e-5)


# ---------------------------------------------------------------------------------------
# Devices and dtypes
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixed_batch_on_device(device, dtype):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(6, 300, generator=gen) * 3).to(device=device, dtype=dtype)
    params = [SamplingParams(temperature=0, presence_penalty=1.0, logprobs=2),
              SamplingParams(seed=11, top_p=0.8, min_p=0.01),
              SamplingParams(top_k=5, frequency_penalty=0.5, min_tokens=3),
              SamplingParams(temperature=0.0, min_tokens=3),
              SamplingParams(seed=12, temperature=2.0, repetition_penalty=1.2, logprobs=0),
              SamplingParams()]
    eos = [{int(logits[i].argmax())} for i in range(6)]

    def run():
        meta = make_meta(params, prompts=[[1, 2]] * 6, outputs=[[7, 7]] * 6, eos=eos,
                         generators=[None if p.seed is None else make_generator(p.seed, device)
                                     for p in params])
        return Sampler()(logits, meta)

    out = run()
    assert all(0 <= t < 300 for t in out.token_ids)
    assert out.token_ids[2] not in eos[2] and out.token_ids[3] not in eos[3]  # min_tokens
    assert out.token_ids[1] == run().token_ids[1] and out.token_ids[4] == run().token_ids[4]
    raw = compute_logprobs(logits).cpu()
    assert raw.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for row, token in enumerate(out.token_ids):
        assert out.sampled_logprobs[row] == pytest.approx(raw[row, token].item(), abs=1e-5)
    assert len(out.top_logprobs[0]) in (2, 3) and len(out.top_logprobs[4]) == 1
