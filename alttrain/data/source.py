"""What every data set hands the trainer: a :class:`DataSource` and its resumable batch streams.

A source describes the data (kind, per-sample shape, mixture centers, class count) and makes
:class:`BatchStream` iterators. Streams draw every random number from their own
``torch.Generator`` seeded from ``(seed, rank, ...)``, never from the global RNGs, so the training
RNG stays independent of the data and a resumed run sees bit-identical batches.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alttrain.errors import CheckpointError, ConfigError

_MASK64 = (1 << 64) - 1
# Salts that keep the generators for different purposes unrelated even for equal seeds.
SALT_BATCH = 0x6261
SALT_EPOCH = 0x6570
SALT_REFERENCE = 0x7266


def _splitmix64(x: int) -> int:
    # The SplitMix64 finaliser: a bijection on 64-bit ints that scrambles nearby inputs apart.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into one non-negative 63-bit seed; different tuples give unrelated streams."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1  # manual_seed takes any 64-bit value, but keep it in int64 range for safety


def make_generator(*parts: int) -> torch.Generator:
    """A fresh CPU generator seeded from ``parts`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def check_int(name: str, value: Any, minimum: int) -> int:
    """Validate an integer option named as the user spells it (``data.batch_size``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    """Validate a positive real option named as the user spells it (``data.std``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_root(root: Any, holding: str) -> str:
    """Validate ``data.root`` (a non-empty path) and expand ``~``; ``holding`` names its content."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ConfigError(f"data.root must be the folder holding {holding}, got {root!r}")
    return os.path.expanduser(str(root))


def check_rank(rank: Any, world_size: Any) -> None:
    """Validate the process coordinates a stream is made for."""
    check_int("world_size", world_size, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ConfigError(f"rank must be an integer in [0, {world_size}), got {rank!r}")


class BatchStream(ABC):
    """An endless iterator of ``(batch_size, *sample_shape)`` float32 CPU batches that can resume.

    ``state_dict()`` holds only ints and strings, so it loads under
    ``torch.load(weights_only=True)``. State is the same on every rank (all ranks step in
    lockstep), so a checkpoint written by rank 0 resumes every rank.
    """

    def __iter__(self) -> BatchStream:
        return self

    @abstractmethod
    def __next__(self) -> torch.Tensor: ...

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def _check_state(self, state: dict, expected: dict) -> None:
        # A position only means something for the same seed/sizes it was recorded with.
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"data stream state has {key}={state.get(key)!r} but this run has "
                    f"{key}={value!r}: resume with the original data settings or start fresh"
                )


class ShardedStream(BatchStream):
    """Batches of a finite data set: per-epoch shuffles, one shard per rank, drop-last, forever.

    Epoch ``e`` shuffles all items with a permutation from a generator seeded by ``(seed, e)``;
    rank ``r`` of ``w`` takes ``perm[r::w]`` of its first ``w * (size // w)`` entries, so shards
    are disjoint and equally long. State is ``(epoch, cursor)``: the permutation is recomputed.
    """

    def __init__(self, size: int, fetch: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        check_rank(rank, world_size)
        self.size, self.fetch, self.batch_size = size, fetch, batch_size
        self.seed, self.rank, self.world_size = int(seed), rank, world_size
        self.batches_per_epoch = (size // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(
                f"data.batch_size={batch_size} x world_size={world_size} exceeds the {size} "
                f"items of the data set: lower data.batch_size"
            )
        self.epoch = 0
        self.cursor = 0  # batches already taken in this epoch
        self._cached: tuple[int, torch.Tensor] | None = None

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's item indices for ``epoch``, in the order they are served."""
        if self._cached is None or self._cached[0] != epoch:
            perm = torch.randperm(self.size, generator=make_generator(self.seed, SALT_EPOCH, epoch))
            usable = (self.size // self.world_size) * self.world_size
            self._cached = (epoch, perm[:usable][self.rank::self.world_size])
        return self._cached[1]

    def __next__(self) -> torch.Tensor:
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor = self.epoch + 1, 0
        start = self.cursor * self.batch_size
        indices = self.shard(self.epoch)[start:start + self.batch_size]
        self.cursor += 1
        return self.fetch(indices)

    def _identity(self) -> dict:
        return {"kind": "sharded", "seed": self.seed, "size": self.size,
                "batch_size": self.batch_size, "world_size": self.world_size}

    def state_dict(self) -> dict:
        return {**self._identity(), "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self._check_state(state, self._identity())
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


@dataclass(kw_only=True, eq=False)
class DataSource(ABC):
    """A data set: what its samples look like and how to stream them.

    ``kind`` is ``"points"`` (2-D toy mixtures) or ``"images"`` (values in [-1, 1]).
    """

    name: str
    kind: str
    sample_shape: tuple[int, ...]
    batch_size: int  # per process
    centers: torch.Tensor | None = field(default=None, repr=False)  # (K, 2) mixture means, toy only
    std: float | None = None  # mixture component standard deviation, toy data only
    num_classes: int | None = None  # labelled sets (digits, mnist, cifar10)
    labels: torch.Tensor | None = field(default=None, repr=False)  # (size,) int64 class per item
    size: int | None = None  # items in a finite set; None for infinite toy data

    @abstractmethod
    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> BatchStream:
        """An endless, resumable batch iterator for process ``rank`` of ``world_size``."""

    @abstractmethod
    def reference(self, n: int) -> torch.Tensor:
        """``n`` real samples for metrics; the same tensor on every call and for every seed."""

    def reference_labels(self, n: int) -> torch.Tensor | None:
        """Class labels of the samples ``reference(n)`` returns, or None for unlabelled data."""
        return None


@dataclass(kw_only=True, eq=False)
class IndexedSource(DataSource):
    """A finite data set served by index: ``fetch(indices)`` returns the batch of those items."""

    fetch: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)

    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> ShardedStream:
        return ShardedStream(self.size, self.fetch, self.batch_size, seed, rank, world_size)

    def reference_indices(self, n: int) -> torch.Tensor:
        """The items behind ``reference(n)``: the first ``n`` of one fixed shuffle."""
        check_int("reference sample count", n, 1)
        if n > self.size:
            raise ConfigError(f"asked for {n} reference samples but {self.name} has only "
                              f"{self.size} items: ask for at most {self.size}")
        return torch.randperm(self.size, generator=make_generator(SALT_REFERENCE))[:n]

    def reference(self, n: int) -> torch.Tensor:
        return self.fetch(self.reference_indices(n))

    def reference_labels(self, n: int) -> torch.Tensor | None:
        return None if self.labels is None else self.labels[self.reference_indices(n)]
