"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) on point sets
whose k-NN balls can be worked out by hand."""

from __future__ import annotations

import pytest
import torch

import alttrain.metrics.prdc as prdc_module
from alttrain.errors import ConfigError
from alttrain.metrics.prdc import (
    density_coverage,
    prdc,
    prdc_where_possible,
    precision_recall,
)


def line(*xs: float) -> torch.Tensor:
    """Points on a line, as an (N, 1) feature matrix."""
    return torch.tensor(xs, dtype=torch.float64).reshape(-1, 1)


def test_k1_on_a_line_by_hand():
    # reals 0..4: every nearest other real is 1 away, so each real ball is [x - 1, x + 1].
    # fakes 0.5, 10, 10.5, 2; their k=1 radii: 1.5, 0.5, 0.5, 1.5.
    real, fake = line(0, 1, 2, 3, 4), line(0.5, 10, 10.5, 2)
    out = prdc(real, fake, k=1)
    # precision: 0.5 and 2 lie in real balls, 10 and 10.5 do not -> 2/4.
    # recall: fake balls [-1, 2], [9.5, 10.5], [10, 11], [0.5, 3.5] hold reals 0, 1, 2, 3, not 4 -> 4/5.
    # density (strict <): 0.5 is < 1 from reals 0 and 1; 2 is < 1 only from real 2 (1 and 3 sit on the
    #   boundary) -> 3 / (k * M) = 3/4.
    # coverage (strict <): nearest fake of reals 0..4 at 0.5, 0.5, 0, 1, 2 -> reals 0, 1, 2 -> 3/5.
    assert out == {"precision": 0.5, "recall": 0.8, "density": 0.75, "coverage": 0.6}


def test_paper_default_k_on_a_line_by_hand():
    # reals 0..6. k=3 radii: 3, 2, 2, 2, 2, 2, 3; k=5 radii: 5, 4, 3, 3, 3, 4, 5.
    # fakes: two inside the reals, four in a far cluster; their k=3 radii: 18, 17.5, 3, 2, 2, 3.
    real, fake = line(0, 1, 2, 3, 4, 5, 6), line(3, 3.5, 20, 21, 22, 23)
    out = prdc(real, fake)
    # precision: only 3 and 3.5 lie in a real ball -> 2/6. recall: the ball of 3 (radius 18) holds every real.
    # density: 3 and 3.5 are each strictly inside all seven k=5 real balls, the far ones in none -> 14 / (5 * 6).
    # coverage: every real's nearest fake (3 or 3.5) is closer than its k=5 radius -> 1.
    assert out == {"precision": 2 / 6, "recall": 1.0, "density": 14 / 30, "coverage": 1.0}
    assert precision_recall(real, fake) == {"precision": 2 / 6, "recall": 1.0}
    assert density_coverage(real, fake) == {"density": 14 / 30, "coverage": 1.0}


def test_identical_sets_score_one_and_far_sets_zero():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    same = prdc(x, x.clone())
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    # Each real ball strictly holds itself and its k - 1 nearer neighbours: density is k / k = 1. The k-th
    # neighbour sits on the boundary, and rounding in the matrix-product distances may put a few of
    # those 300 ties inside (each adds 1 / (k * 300)).
    assert 1.0 <= same["density"] <= 1.0 + 5 / (5 * 300)
    assert prdc(x, x + 1000.0) == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_a_collapsed_generator_has_precision_but_no_recall_or_coverage():
    real = torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    fake = real[:1].repeat(400, 1) + 1e-9 * torch.randn(400, 2, generator=torch.Generator().manual_seed(2))
    out = prdc(real, fake)
    assert out["precision"] == 1.0
    assert out["recall"] <= 0.01 and out["coverage"] <= 0.02
    assert out["density"] > 1.0  # every fake sits in the same few real balls: density is unbounded above


def test_chunks_bound_the_distance_blocks_and_change_nothing(monkeypatch):
    gen = torch.Generator().manual_seed(3)
    real, fake = torch.randn(700, 8, generator=gen), torch.randn(500, 8, generator=gen) + 0.3
    whole = prdc(real, fake, chunk=4096)
    shapes = []
    cdist = torch.cdist
    monkeypatch.setattr(prdc_module.torch, "cdist", lambda a, b: (shapes.append(tuple(a.shape)), cdist(a, b))[1])
    assert prdc(real, fake, chunk=64) == whole
    assert max(rows for rows, _ in shapes) == 64  # never more than chunk x N distances at a time


def test_too_few_samples_or_mismatched_widths_are_config_errors():
    with pytest.raises(ConfigError, match="k=5 nearest neighbours need at least 6 samples"):
        prdc(line(0, 1, 2, 3, 4, 5), line(0, 1, 2, 3, 4))
    with pytest.raises(ConfigError, match="width"):
        prdc(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        prdc(torch.zeros(10, 2, 2), torch.zeros(10, 2, 2))


def test_where_possible_leaves_out_the_pair_that_needs_more_samples():
    real, fake = line(0, 1, 2, 3, 4), line(0.5, 1.5, 2.5, 3.5)
    assert set(prdc_where_possible(real, fake)) == {"precision", "recall"}  # 4 samples: k=3 only
    assert prdc_where_possible(real, line(0, 1, 2)) == {}
