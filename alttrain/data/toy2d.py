"""2-D Gaussian mixtures, the classic mode-collapse benchmarks: ``ring8`` and ``grid25``.

Samples are drawn fresh for every batch, so the data are infinite; batch ``i`` of rank ``r``
comes from a generator seeded by ``(seed, r, i)``, which makes the stream state a single
counter that is the same on every rank. A point's label is the index of the mode it was drawn from.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from alttrain.data.source import (
    SALT_BATCH,
    SALT_REFERENCE,
    BatchStream,
    DataSource,
    check_int,
    check_positive,
    check_rank,
    make_generator,
)
from alttrain.engine.batch import Batch


def _sample(centers: torch.Tensor, std: float, n: int, generator: torch.Generator) -> Batch:
    # x = mu_k + std * eps with k uniform over the components and eps ~ N(0, I).
    k = torch.randint(len(centers), (n,), generator=generator)
    return Batch(centers[k] + std * torch.randn(n, 2, generator=generator), k)


class MixtureStream(BatchStream):
    """Endless batches from an equal-weight isotropic Gaussian mixture."""

    def __init__(self, centers: torch.Tensor, std: float, batch_size: int,
                 seed: int, rank: int = 0, world_size: int = 1):
        check_rank(rank, world_size)
        self.centers, self.std, self.batch_size = centers, std, batch_size
        self.seed, self.rank = int(seed), rank
        self.batches = 0  # batches already served
        self.wait_seconds = 0.0  # time spent inside next(), for time/data_wait

    def __next__(self) -> Batch:
        start = time.perf_counter()
        generator = make_generator(self.seed, SALT_BATCH, self.rank, self.batches)
        self.batches += 1
        batch = _sample(self.centers, self.std, self.batch_size, generator)
        self.wait_seconds += time.perf_counter() - start
        return batch

    def state_dict(self) -> dict:
        return {"kind": "mixture", "seed": self.seed, "batch_size": self.batch_size,
                "batches": self.batches}

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, {"kind": "mixture", "seed": self.seed,
                                  "batch_size": self.batch_size})
        self.batches = int(state["batches"])


@dataclass(kw_only=True, eq=False)
class MixtureSource(DataSource):
    """A 2-D Gaussian mixture with ``centers`` (K, 2) and per-axis standard deviation ``std``."""

    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> MixtureStream:
        return MixtureStream(self.centers, self.std, self.batch_size, seed, rank, world_size)

    def reference(self, n: int) -> torch.Tensor:
        """``n`` samples with the components assigned round-robin (equal counts up to one)."""
        check_int("reference sample count", n, 1)
        k = torch.arange(n) % len(self.centers)
        noise = torch.randn(n, 2, generator=make_generator(SALT_REFERENCE))
        return self.centers[k] + self.std * noise

    def reference_labels(self, n: int) -> torch.Tensor:
        return torch.arange(n) % len(self.centers)

    def class_frequencies(self) -> torch.Tensor:
        return torch.full((len(self.centers),), 1.0 / len(self.centers), dtype=torch.float64)


def ring8(batch_size: int = 256, num_modes: int = 8, radius: float = 1.0,
          std: float = 0.01) -> MixtureSource:
    """``num_modes`` Gaussians evenly spaced on a circle: mode k sits at angle 2*pi*k/num_modes."""
    check_int("data.batch_size", batch_size, 1)
    check_int("data.num_modes", num_modes, 1)
    radius, std = check_positive("data.radius", radius), check_positive("data.std", std)
    # arange(K)/K, not linspace(0, 2pi, K): linspace includes 2pi, which lands on mode 0 again.
    angles = 2 * math.pi * torch.arange(num_modes, dtype=torch.float64) / num_modes
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return MixtureSource(name=f"ring{num_modes}", kind="points", sample_shape=(2,), batch_size=batch_size,
                         centers=centers.float(), std=std, num_classes=num_modes)


def grid25(batch_size: int = 256, grid: int = 5, spacing: float = 2.0,
           std: float = 0.05) -> MixtureSource:
    """``grid`` x ``grid`` Gaussians on a square lattice centred on 0 (default {-4,-2,0,2,4}^2)."""
    check_int("data.batch_size", batch_size, 1)
    check_int("data.grid", grid, 1)
    spacing, std = check_positive("data.spacing", spacing), check_positive("data.std", std)
    axis = (torch.arange(grid, dtype=torch.float64) - (grid - 1) / 2) * spacing
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    centers = torch.stack([xs.flatten(), ys.flatten()], dim=1)
    return MixtureSource(name=f"grid{grid * grid}", kind="points", sample_shape=(2,), batch_size=batch_size,
                         centers=centers.float(), std=std, num_classes=grid * grid)
