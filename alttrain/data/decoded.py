"""Finite data sets decoded per item (files, a user's ``Dataset``): the reader contract and the source.

A :class:`DecodedSource` reads in the training process (``num_workers=0``, a
:class:`~alttrain.data.source.ShardedStream`) or in DataLoader workers (a
:class:`~alttrain.data.pipeline.LoaderStream`); both call the same :meth:`ItemReader.read`, so they
serve identical batches.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alttrain.checks import check_int, is_int, is_number
from alttrain.data.pipeline import LoaderStream
from alttrain.data.source import IndexedSource, ShardedStream
from alttrain.data.subset import check_subset
from alttrain.engine.batch import Batch
from alttrain.errors import ConfigError


def check_workers(value: Any) -> Any:
    if value != "auto" and not (is_int(value) and value >= 0):
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0 (0 reads in the training process), "
                          f"got {value!r}")
    return value


def check_timeout(value: Any) -> float:
    if not is_number(value) or value < 0:
        raise ConfigError(f"data.timeout must be a number of seconds >= 0 (0 waits forever), got {value!r}")
    return float(value)


def check_pipeline(num_workers: Any, prefetch: Any, timeout: Any, subset: Any) -> None:
    """The settings every decoded set shares, checked before a folder is scanned or a data set opened."""
    check_workers(num_workers)
    check_int("data.prefetch", prefetch, 1)
    check_timeout(timeout)
    check_subset("data.subset", subset)


def resolve_workers(value: Any, world_size: int = 1) -> int:
    """``data.num_workers``: ``auto`` leaves one core per process for training, at most 8 workers."""
    if value != "auto":
        return value
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # torchrun's processes on this machine share its cores (LOCAL_WORLD_SIZE <= world_size).
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return min(8, max(0, cpus // max(1, local) - 1))


def as_list(indices: torch.Tensor | Sequence[int]) -> list[int]:
    return indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)


class ItemReader(ABC):
    """Decodes items by index, in the training process or in a worker (so: picklable, no open files)."""

    @abstractmethod
    def read(self, indices: torch.Tensor | Sequence[int], seed: int, epoch: int) -> Batch:
        """The training batch of these items; random transforms are seeded from ``(seed, epoch, index)``."""

    @abstractmethod
    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        """The samples of these items without random transforms (metric reference sets)."""


@dataclass(kw_only=True, eq=False)
class DecodedSource(IndexedSource):
    """A finite set decoded per item by ``reader``; its streams read in worker processes.

    ``num_workers`` (``auto``: :func:`resolve_workers`; 0: in the training process), ``prefetch``
    batches per worker, ``timeout`` seconds for one batch (0: forever). ``check``, when set, runs
    once before the first stream is made (``data.verify``).
    """

    reader: ItemReader = field(repr=False)
    num_workers: int | str = "auto"
    prefetch: int = 2
    timeout: float = 300.0
    check: Callable[[], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_pipeline(self.num_workers, self.prefetch, self.timeout, self.subset)
        self.timeout = float(self.timeout)

    def stream(self, seed: int, rank: int = 0, world_size: int = 1) -> ShardedStream:
        if self.check is not None:
            self.check()
            self.check = None  # passed: later streams (another rank's, a benchmark's) need not repeat it
        workers = resolve_workers(self.num_workers, world_size)
        args = (self.size, self.fetch, self.batch_size, seed, rank, world_size, self.labels)
        common = {"items": self.subset_items(seed), "subset": self.subset}
        if workers == 0:
            return ShardedStream(*args, read=lambda indices, epoch: self.reader.read(indices, seed, epoch), **common)
        return LoaderStream(*args, reader=self.reader, num_workers=workers, prefetch=self.prefetch,
                            timeout=self.timeout, pin_memory=self.pin_memory, name=self.name, **common)
