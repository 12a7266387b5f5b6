"""What every data set hands the trainer: a :class:`DataSource` and its resumable batch streams.

A source describes the data (kind, per-sample shape, mixture centers, class count) and makes
:class:`BatchStream` iterators. Streams draw every random number from their own
``torch.Generator`` seeded from ``(seed, rank, ...)``, never from the global RNGs, so the training
RNG stays independent of the data and a resumed run sees bit-identical batches.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from alttrain.checks import check_int, check_positive
from alttrain.data.plan import ShardPlan, check_rank
from alttrain.data.subset import check_subset, subset_items
from alttrain.engine.batch import Batch
from alttrain.errors import CheckpointError, ConfigError
from alttrain.scale.rng import derive_seed, make_generator

__all__ = ["BatchStream", "DataSource", "IndexedSource", "ShardPlan", "ShardedStream", "check_int", "check_positive",
           "check_rank", "check_root", "derive_seed", "make_generator"]

# Salts that keep the generators for different purposes unrelated even for equal seeds.
SALT_BATCH = 0x6261
SALT_REFERENCE = 0x7266


def check_root(root: Any, holding: str) -> str:
    """Validate ``data.root`` (a non-empty path) and expand ``~``; ``holding`` names its content."""
    if not isinstance(root, (str, os.PathLike)) or not str(root):
        raise ConfigError(f"data.root must be the folder holding {holding}, got {root!r}")
    return os.path.expanduser(str(root))


class BatchStream(ABC):
    """An endless iterator of :class:`~alttrain.engine.batch.Batch` es that can resume.

    ``samples`` are ``(batch_size, *sample_shape)`` float32 CPU tensors; ``labels``, for labelled
    data, ``(batch_size,)`` int64.

    ``state_dict()`` holds only ints, floats and strings, so it loads under
    ``torch.load(weights_only=True)``. State is the same on every rank (all ranks step in
    lockstep), so a checkpoint written by rank 0 resumes every rank.
    """

    def __iter__(self) -> BatchStream:
        return self

    @abstractmethod
    def __next__(self) -> Batch: ...

    @abstractmethod
    def state_dict(self) -> dict: ...

    @abstractmethod
    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None:
        """Release what the stream holds (worker processes); the run calls it when training ends."""

    def _check_state(self, state: dict, expected: dict) -> None:
        # A position only means something for the same seed/sizes it was recorded with.
        for key, value in expected.items():
            if state.get(key) != value:
                raise CheckpointError(
                    f"data stream state has {key}={state.get(key)!r} but this run has "
                    f"{key}={value!r}: resume with the original data settings or start fresh"
                )


class ShardedStream(BatchStream):
    """Batches of a finite data set, read in this process: the order of :class:`ShardPlan`, forever.

    ``fetch(indices)`` returns the samples of those items (and ``labels[indices]`` their labels);
    ``read(indices, epoch)``, when given, returns the whole :class:`Batch` instead (decoded sets
    whose random transforms depend on the epoch). ``items``/``subset``: the kept part of the set
    (:mod:`alttrain.data.subset`). State is ``(epoch, cursor)`` of the batches served: the
    permutation is recomputed. ``wait_seconds`` sums the time spent inside ``next()``.
    """

    def __init__(self, size: int, fetch: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 labels: torch.Tensor | None = None, *, items: torch.Tensor | None = None,
                 read: Callable[[torch.Tensor, int], Batch] | None = None, subset: float = 1.0):
        self.plan = ShardPlan(size, batch_size, seed, rank, world_size, items)
        self.size, self.fetch, self.batch_size, self.labels, self.read = size, fetch, batch_size, labels, read
        self.seed, self.rank, self.world_size, self.subset = int(seed), rank, world_size, subset
        self.batches_per_epoch = self.plan.batches_per_epoch
        if self.batches_per_epoch == 0:
            kept = f" (data.subset={subset:g} keeps {self.plan.count} of {size})" if items is not None else ""
            raise ConfigError(
                f"data.batch_size={batch_size} x world_size={world_size} exceeds the {self.plan.count} "
                f"items of the data set{kept}: lower data.batch_size"
            )
        self.epoch = 0
        self.cursor = 0  # batches already taken in this epoch
        self.wait_seconds = 0.0  # time spent inside next(), for time/data_wait

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's item indices for ``epoch``, in the order they are served."""
        return self.plan.shard(epoch)

    def next_indices(self) -> torch.Tensor:
        """The item indices of the next batch (advances the stream)."""
        self.epoch, self.cursor = self.plan.following(self.epoch, self.cursor)
        indices = self.plan.indices(self.epoch, self.cursor)
        self.cursor += 1
        return indices

    def __next__(self) -> Batch:
        start = time.perf_counter()
        indices = self.next_indices()
        if self.read is not None:
            batch = self.read(indices, self.epoch)
        else:
            batch = Batch(self.fetch(indices), None if self.labels is None else self.labels[indices])
        self.wait_seconds += time.perf_counter() - start
        return batch

    def _identity(self) -> dict:
        identity = {"kind": "sharded", "seed": self.seed, "size": self.size,
                    "batch_size": self.batch_size, "world_size": self.world_size}
        if self.subset < 1.0:  # only then: states written before data.subset existed still load
            identity["subset"] = self.subset
        return identity

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
    num_classes: int | None = None  # labelled sets (digits, mnist, cifar10, image_folder, mixtures)
    labels: torch.Tensor | None = field(default=None, repr=False)  # (size,) int64 class per item, finite sets
    size: int | None = None  # items in a finite set; None for infinite toy data
    # Set by the builder when training on CUDA: streams that read in worker processes then hand over
    # batches in page-locked memory, so the trainer's non_blocking copy overlaps with compute.
    pin_memory: bool = False

    @abstractmethod
    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> BatchStream:
        """An endless, resumable batch iterator for process ``rank`` of ``world_size``."""

    @abstractmethod
    def reference(self, n: int) -> torch.Tensor:
        """``n`` real samples for metrics; the same tensor on every call and for every seed."""

    def reference_labels(self, n: int) -> torch.Tensor | None:
        """Class labels of the samples ``reference(n)`` returns, or None for unlabelled data."""
        return None

    def class_frequencies(self) -> torch.Tensor | None:
        """``(num_classes,)`` share of each class in the data, or None for unlabelled data."""
        return None


@dataclass(kw_only=True, eq=False)
class IndexedSource(DataSource):
    """A finite data set served by index: ``fetch(indices)`` returns the batch of those items.

    ``subset`` (``data.subset``) trains on that fraction of the items, chosen from the stream's seed
    (:mod:`alttrain.data.subset`); ``size`` and :meth:`reference` stay the full set.
    """

    fetch: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    subset: float = 1.0

    def __post_init__(self) -> None:
        self.subset = check_subset("data.subset", self.subset)

    def subset_items(self, seed: int) -> torch.Tensor | None:
        """The items a run with ``seed`` trains on (sorted), or ``None`` for all of them."""
        return subset_items(self.size, self.subset, seed, self.labels)

    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> ShardedStream:
        return ShardedStream(self.size, self.fetch, self.batch_size, seed, rank, world_size, self.labels,
                             items=self.subset_items(seed), subset=self.subset)

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

    def class_frequencies(self) -> torch.Tensor | None:
        if self.labels is None or self.num_classes is None:
            return None
        counts = torch.bincount(self.labels, minlength=self.num_classes).to(torch.float64)
        return counts / counts.sum()
