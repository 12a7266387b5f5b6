"""The order of a finite data set's batches: per-epoch shuffles, one shard per rank, drop-last.

Every stream of a finite set, read in the training process or by worker processes, serves the
batches a :class:`ShardPlan` lists, so the two give the same batches in the same order.
"""

from __future__ import annotations

from typing import Any

import torch

from alttrain.checks import check_int
from alttrain.errors import ConfigError
from alttrain.scale.rng import make_generator

SALT_EPOCH = 0x6570  # keeps the epoch shuffles unrelated to the other generators of equal seeds


def check_rank(rank: Any, world_size: Any) -> None:
    """Validate the process coordinates a stream is made for."""
    check_int("world_size", world_size, 1)
    if not 0 <= check_int("rank", rank, 0) < world_size:
        raise ConfigError(f"rank must be an integer in [0, {world_size}), got {rank!r}")


class ShardPlan:
    """Which items each batch of a finite set holds, for one rank: the order every stream serves.

    Epoch ``e`` shuffles the set's items with a permutation from a generator seeded by
    ``(seed, e)``; rank ``r`` of ``w`` takes ``perm[r::w]`` of its first ``w * (count // w)``
    entries, so shards are disjoint and equally long, and the last partial batch is dropped.
    ``items`` (a subset, see :mod:`alttrain.data.subset`) maps positions to item indices.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 items: torch.Tensor | None = None):
        check_rank(rank, world_size)
        self.items, self.batch_size, self.seed = items, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.count = size if items is None else len(items)  # items shuffled per epoch, all ranks together
        self.batches_per_epoch = (self.count // world_size) // batch_size
        self._cached: tuple[int, torch.Tensor] | None = None

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's item indices for ``epoch``, in the order they are served."""
        if self._cached is None or self._cached[0] != epoch:
            perm = torch.randperm(self.count, generator=make_generator(self.seed, SALT_EPOCH, epoch))
            usable = (self.count // self.world_size) * self.world_size
            shard = perm[:usable][self.rank::self.world_size]
            self._cached = (epoch, shard if self.items is None else self.items[shard])
        return self._cached[1]

    def following(self, epoch: int, cursor: int) -> tuple[int, int]:
        """The (epoch, batch) served next by a stream that has served ``cursor`` batches of ``epoch``."""
        return (epoch + 1, 0) if cursor >= self.batches_per_epoch else (epoch, cursor)

    def indices(self, epoch: int, cursor: int) -> torch.Tensor:
        """The item indices of batch ``cursor`` of ``epoch``."""
        start = cursor * self.batch_size
        return self.shard(epoch)[start:start + self.batch_size]
