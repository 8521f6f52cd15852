"""M0: the memory arithmetic in folo_edu.viz.memory and the checks in folo_edu.labs.m0_config."""
from __future__ import annotations

import numpy as np
import pytest

from folo_edu.labs.m0_config import check_crossover_context, check_kv_bytes_per_token
from folo_edu.viz.memory import (ModelShape, crossover_context, kv_bytes_per_token,
                                 memory_vs_context, plot_memory_vs_context, weight_bytes)

LLAMA3_8B = ModelShape("Llama-3-8B", 8.03e9, num_layers=32, num_kv_heads=8, head_dim=128)
SMOLLM2 = ModelShape("SmolLM2-135M", 134.5e6, num_layers=30, num_kv_heads=3, head_dim=64)


def test_kv_bytes_per_token_by_hand():
    assert kv_bytes_per_token(32, 8, 128, 2) == 131072  # 128 KiB, Llama-3-8B in bf16
    assert kv_bytes_per_token(30, 3, 64, 2) == 23040  # SmolLM2-135M in bf16
    assert kv_bytes_per_token(2, 2, 16, 4) == 512


def test_memory_vs_context():
    mem = memory_vs_context(SMOLLM2, [0, 1000, 2000], num_seqs=2)
    assert mem["weights"].tolist() == [269_000_000] * 3
    assert mem["kv"].tolist() == [0, 2 * 1000 * 23040, 2 * 2000 * 23040]
    assert np.array_equal(mem["total"], mem["weights"] + mem["kv"])
    with pytest.raises(ValueError, match="num_seqs=0"):
        memory_vs_context(SMOLLM2, [10], num_seqs=0)


def test_crossover_is_the_first_context_where_kv_reaches_the_weights():
    for shape in (SMOLLM2, LLAMA3_8B):
        for seqs in (1, 8):
            c = crossover_context(shape, seqs)
            kv = memory_vs_context(shape, [c - 1, c], seqs)["kv"]
            assert kv[0] < weight_bytes(shape) <= kv[1]
    assert crossover_context(LLAMA3_8B) == 122529


def test_plot_draws_one_curve_pair_per_model():
    fig = plot_memory_vs_context([SMOLLM2, LLAMA3_8B], max_context=32768)
    ax = fig.axes[0]
    solid = [l for l in ax.lines if l.get_linestyle() == "-"]
    assert len(solid) == 2 and ax.get_yscale() == "log"
    # SmolLM2 crosses within 32k (a dot is drawn), Llama-3-8B does not.
    dots = [l for l in ax.lines if l.get_marker() == "o"]
    assert len(dots) == 1
    assert "beyond this plot" in ax.get_legend().get_texts()[1].get_text()


def test_kv_check_passes_the_right_answer_and_explains_wrong_ones(capsys):
    assert check_kv_bytes_per_token(2 * 32 * 8 * 128 * 2) is True
    assert "Correct" in capsys.readouterr().out
    assert check_kv_bytes_per_token(None) is False
    assert "Not answered yet" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="K only"):
        check_kv_bytes_per_token(32 * 8 * 128 * 2)
    with pytest.raises(AssertionError, match="one layer"):
        check_kv_bytes_per_token(2 * 8 * 128 * 2)
    with pytest.raises(AssertionError, match="all query heads"):
        check_kv_bytes_per_token(2 * 32 * 32 * 128 * 2)
    with pytest.raises(AssertionError, match="not a number"):
        check_kv_bytes_per_token("128 KiB")
    assert check_kv_bytes_per_token(2 * 30 * 3 * 64 * 4, num_layers=30, num_kv_heads=3,
                                    head_dim=64, bytes_per_elem=4, num_heads=9)


def test_crossover_check():
    assert check_crossover_context(8.03e9 * 2 / 131072)
    assert check_crossover_context(15316, num_seqs=8)
    with pytest.raises(AssertionError, match="for one sequence"):
        check_crossover_context(122528, num_seqs=8)
    with pytest.raises(AssertionError, match="divide the weight bytes"):
        check_crossover_context(32768)
