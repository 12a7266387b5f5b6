"""Precision, recall, density and coverage: k-nearest-neighbour manifolds in any feature space.

Each sample's *ball* is centred on it with radius the distance to its k-th nearest neighbour in its
own set (the sample itself not counted). With real samples x_1..x_N, fake samples y_1..y_M:

* precision (Kynkäänniemi et al. 2019): share of fakes inside at least one real ball (fidelity);
* recall (same paper): share of reals inside at least one fake ball (diversity); k = 3 in the paper;
* density (Naeem et al. 2020): (1 / kM) sum_j #{i : y_j in ball(x_i)}, how many real balls hold a
  fake on average, divided by k; about 1 when the two sets come from one distribution, and
  unbounded above, unlike precision;
* coverage (same paper): share of reals whose ball holds at least one fake; k = 5 in the paper.

Boundaries follow each paper's reference code: precision and recall count a point on a ball's
surface as inside (``<=``, NVlabs' improved-precision-recall-metric and torch-fidelity), density and
coverage do not (``<``, clovaai's generative-evaluation-prdc). This only matters for ties; it
makes density exactly 1 when the fakes are the reals. A real ball of radius 0 (more than k copies
of one point) holds nothing for density and coverage.

Distances are Euclidean, in float64, computed in row chunks so 10k x 10k sets need only
``chunk x 10k`` distances at a time (80 MB for the default chunk).
"""

from __future__ import annotations

import torch
from torch import Tensor

from alttrain.checks import check_int
from alttrain.errors import ConfigError

K_PRECISION_RECALL = 3   # Kynkäänniemi et al. 2019, the value behind their reported numbers
K_DENSITY_COVERAGE = 5   # Naeem et al. 2020, the value they recommend
CHUNK = 1024             # rows of the distance matrix held at once


def _check(real: Tensor, fake: Tensor, k: int) -> tuple[Tensor, Tensor]:
    check_int("k", k, 1)
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ConfigError(f"{name} features must be a (N, D) tensor, got {getattr(x, 'shape', type(x))}")
        if x.shape[0] <= k:
            raise ConfigError(f"{name} features: k={k} nearest neighbours need at least {k + 1} samples, "
                              f"got {x.shape[0]}; score more samples or lower k")
    if real.shape[1] != fake.shape[1]:
        raise ConfigError(f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}")
    return real.detach().to(torch.float64), fake.detach().to(device=real.device, dtype=torch.float64)


def knn_radii(x: Tensor, ks: tuple[int, ...], chunk: int = CHUNK) -> dict[int, Tensor]:
    """Distance from each row of ``x`` to its k-th nearest other row, for each k in ``ks``."""
    top = max(ks) + 1  # + 1: every row is its own nearest neighbour, at distance 0
    nearest = torch.cat([torch.cdist(rows, x).topk(top, dim=1, largest=False).values for rows in x.split(chunk)])
    return {k: nearest[:, k] for k in ks}


def _scores(real: Tensor, fake: Tensor, k_pr: int | None, k_dc: int | None, chunk: int) -> dict[str, float]:
    ks = tuple(k for k in (k_pr, k_dc) if k is not None)
    real_r = knn_radii(real, ks, chunk)
    fake_r = knn_radii(fake, (k_pr,), chunk)[k_pr] if k_pr is not None else None
    precise, in_balls = [], []
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((real.shape[0],), torch.inf, dtype=torch.float64, device=real.device)
    for start in range(0, fake.shape[0], chunk):
        d = torch.cdist(fake[start:start + chunk], real)  # (fakes in this chunk, reals)
        if k_pr is not None:
            precise.append((d <= real_r[k_pr]).any(dim=1))
            recalled |= (d <= fake_r[start:start + chunk, None]).any(dim=0)
        if k_dc is not None:
            in_balls.append((d < real_r[k_dc]).sum(dim=1))
            nearest_fake = torch.minimum(nearest_fake, d.min(dim=0).values)
    out = {}
    if k_pr is not None:
        out["precision"] = torch.cat(precise).double().mean().item()
        out["recall"] = recalled.double().mean().item()
    if k_dc is not None:
        out["density"] = torch.cat(in_balls).double().mean().item() / k_dc
        out["coverage"] = (nearest_fake < real_r[k_dc]).double().mean().item()
    return out


@torch.no_grad()
def prdc(real: Tensor, fake: Tensor, k: int | None = None, chunk: int = CHUNK) -> dict[str, float]:
    """``precision``, ``recall``, ``density`` and ``coverage`` of ``fake`` ``(M, D)`` against ``real`` ``(N, D)``.

    ``k=None`` uses each paper's own k (3 for precision/recall, 5 for density/coverage); an int uses
    that k for all four, as Naeem et al.'s reference code does. Both sets need more than k samples.
    """
    k_pr, k_dc = (K_PRECISION_RECALL, K_DENSITY_COVERAGE) if k is None else (k, k)
    real, fake = _check(real, fake, max(k_pr, k_dc))
    return _scores(real, fake, k_pr, k_dc, chunk)


@torch.no_grad()
def precision_recall(real: Tensor, fake: Tensor, k: int = K_PRECISION_RECALL, chunk: int = CHUNK) -> dict[str, float]:
    """``precision`` and ``recall`` only (Kynkäänniemi et al. 2019)."""
    real, fake = _check(real, fake, k)
    return _scores(real, fake, k, None, chunk)


@torch.no_grad()
def density_coverage(real: Tensor, fake: Tensor, k: int = K_DENSITY_COVERAGE, chunk: int = CHUNK) -> dict[str, float]:
    """``density`` and ``coverage`` only (Naeem et al. 2020)."""
    real, fake = _check(real, fake, k)
    return _scores(real, fake, None, k, chunk)


def prdc_where_possible(real: Tensor, fake: Tensor, chunk: int = CHUNK) -> dict[str, float]:
    """:func:`prdc` with the papers' k, leaving out a pair whose k needs more samples than a set has.

    For evaluations of a handful of samples (smoke runs): 4 samples give precision/recall only,
    fewer give nothing.
    """
    smallest = min(real.shape[0], fake.shape[0])
    k_pr = K_PRECISION_RECALL if smallest > K_PRECISION_RECALL else None
    k_dc = K_DENSITY_COVERAGE if smallest > K_DENSITY_COVERAGE else None
    if k_pr is None and k_dc is None:
        return {}
    real, fake = _check(real, fake, max(k for k in (k_pr, k_dc) if k is not None))
    with torch.no_grad():
        return _scores(real, fake, k_pr, k_dc, chunk)
