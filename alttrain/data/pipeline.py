"""Batches of decoded data sets read by ``DataLoader`` worker processes, in the in-process order.

A :class:`~alttrain.data.decoded.DecodedSource` (``image_folder``, a user's ``Dataset``) decodes
every item on demand. With ``num_workers > 0`` its stream is a :class:`LoaderStream`: a
``DataLoader`` whose batch sampler yields the index batches :class:`~alttrain.data.plan.ShardPlan`
defines, from the stream's position on, endlessly. So

* the batches, and their order, are those of the in-process stream (``num_workers=0``),
  bit for bit: both call the same ``reader.read(indices, seed, epoch)``, whose random transforms are
  seeded per item from ``(seed, epoch, index)``, never from a worker's RNG;
* the state is ``(epoch, cursor)`` of the batches *served*, not of those prefetched, and resuming
  starts a loader at that position;
* one loader iterator spans every epoch, so workers start once per run (what
  ``persistent_workers`` gives an epoch loop) and prefetch across epoch boundaries.

Failures are one line: a reader error in a worker comes back as a value and is raised here as the
same :class:`DataError`; a worker that dies (killed, crashed) or a batch that takes longer than
``timeout`` raises a :class:`DataError` naming the worker.
"""

from __future__ import annotations

import atexit
import signal
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from alttrain.data.plan import ShardPlan
from alttrain.data.source import ShardedStream
from alttrain.engine.batch import Batch
from alttrain.errors import AltTrainError, DataError
from alttrain.scale.rng import make_generator

if TYPE_CHECKING:
    from alttrain.data.decoded import ItemReader

SALT_LOADER = 0x6c64
POLL_SECONDS = 1.0  # how often a wait for a batch checks that the workers are alive
_OPEN: weakref.WeakSet = weakref.WeakSet()  # streams whose workers run


@atexit.register
def _close_open_streams() -> None:
    # Runs before multiprocessing's exit hook (registered earlier, so run later), which would send
    # the workers a SIGTERM they ignore (see _ignore_stop_signals) and then wait for them forever.
    for stream in list(_OPEN):
        stream.close(kill=True)


@dataclass
class ReadFailure:
    """A reader's error, sent back from a worker as a value: re-raised there, it would gain a traceback."""

    error: type
    message: str


class _WorkerBatches(torch.utils.data.Dataset):
    """What workers run: one ``(epoch, indices)`` task from the batch sampler -> one :class:`Batch`."""

    def __init__(self, reader: ItemReader, seed: int):
        self.reader, self.seed = reader, seed

    def __getitem__(self, index):
        raise TypeError("read by whole batches (__getitems__)")

    def __getitems__(self, task: tuple[int, list[int]]) -> Batch | ReadFailure:
        epoch, indices = task
        try:
            return self.reader.read(indices, self.seed, epoch)
        except AltTrainError as exc:
            return ReadFailure(type(exc), str(exc))


def _as_is(batch):
    return batch


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers ignore what asks the run to stop (Ctrl-C reaches the whole process group, SLURM signals
    every process of a job): the training process stops at a step boundary, which may need batches
    still to come, and then ends its workers itself. A worker whose parent dies exits on its own."""
    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class _PlanBatches:
    """Batch sampler: the plan's ``(epoch, indices)`` from a position on, without end."""

    def __init__(self, plan: ShardPlan, epoch: int, cursor: int):
        self.plan, self.epoch, self.cursor = plan, epoch, cursor

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        epoch, cursor = self.epoch, self.cursor
        while True:
            epoch, cursor = self.plan.following(epoch, cursor)
            yield epoch, self.plan.indices(epoch, cursor).tolist()
            cursor += 1


class LoaderStream(ShardedStream):
    """A :class:`ShardedStream` whose batches are read ahead by ``num_workers`` worker processes."""

    def __init__(self, *args: Any, reader: ItemReader, num_workers: int, prefetch: int = 2,
                 timeout: float = 300.0, pin_memory: bool = False, name: str = "data", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.reader, self.num_workers, self.prefetch = reader, num_workers, prefetch
        self.timeout, self.pin_memory, self.name = timeout, pin_memory, name
        self._iterator = None  # started by the first next(): a resumed stream starts at its position

    def _open(self):
        loader = torch.utils.data.DataLoader(
            _WorkerBatches(self.reader, self.seed), batch_sampler=_PlanBatches(self.plan, self.epoch, self.cursor),
            num_workers=self.num_workers, collate_fn=_as_is, pin_memory=self.pin_memory,
            prefetch_factor=self.prefetch, timeout=POLL_SECONDS, worker_init_fn=_ignore_stop_signals,
            # The loader draws its base seed from this generator; by default it would draw from the
            # global RNG and shift every later z of the run.
            generator=make_generator(self.seed, SALT_LOADER, self.rank))
        iterator = iter(loader)
        _leave_sigchld_alone(iterator)
        _OPEN.add(self)
        return iterator

    def __next__(self) -> Batch:
        start = time.perf_counter()
        if self._iterator is None:
            self._iterator = self._open()
        batch = self._receive()
        if isinstance(batch, ReadFailure):
            self.close()
            raise batch.error(batch.message)
        self.epoch, self.cursor = self.plan.following(self.epoch, self.cursor)
        self.cursor += 1
        self.wait_seconds += time.perf_counter() - start
        return batch

    def _receive(self):
        deadline = time.perf_counter() + self.timeout if self.timeout else None
        while True:
            try:
                return next(self._iterator)
            except Exception as exc:
                waiting = str(exc).startswith("DataLoader timed out")
                if waiting and (deadline is None or time.perf_counter() < deadline):
                    continue  # every POLL_SECONDS: the loader has checked that its workers are alive
                error = self._stuck() if waiting else self._died(exc)
                if error is None:
                    raise
                self.close(kill=True)  # stuck or dead: none of them would answer a shutdown request
                raise error from exc

    def _died(self, exc: Exception) -> DataError | None:
        """The error for a worker that died, or ``None`` when all of them live.

        The loader says "DataLoader worker (pid(s) ...) exited unexpectedly" when it finds one dead;
        a batch the worker had queued fails first (EOFError, ConnectionError: the shared memory
        it was handing over went with it), while the kernel is still tearing the process down.
        """
        workers = getattr(self._iterator, "_workers", ())
        for _ in range(int(POLL_SECONDS / 0.05)):
            dead = [w for w in workers if not w.is_alive()]
            if dead or not workers:
                break
            time.sleep(0.05)
        if not dead and not str(exc).startswith("DataLoader worker"):
            return None
        how = ", ".join(f"pid {w.pid} {_exit_reason(w.exitcode)}" for w in dead) or str(exc)
        return DataError(f"a data loader worker reading {self.name} died ({how}): the out-of-memory killer is "
                         f"a common cause; lower data.num_workers or data.batch_size, or set data.num_workers=0 "
                         f"to read in the training process")

    def _stuck(self) -> DataError:
        return DataError(f"no batch of {self.name} came from the data loader workers in {self.timeout:g} s "
                         f"(data.timeout): a worker is stuck (a stalled network file system, a deadlock in the "
                         f"data set's code?); raise data.timeout if batches are that slow (0 waits forever)")

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.close()  # the next batch starts a loader at the loaded position

    def close(self, kill: bool = False) -> None:
        """Stop the workers (``kill``: at once, without asking them to finish what they are reading)."""
        iterator, self._iterator = self._iterator, None
        workers = getattr(iterator, "_workers", ())
        if kill:
            _kill(workers)
        shutdown = getattr(iterator, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()  # now, not whenever the iterator is collected: an exception's traceback may hold it
        _kill(workers)  # any still stuck in a read: deaf to the SIGTERM the shutdown sends (see above)

    def __del__(self) -> None:
        if getattr(self, "_iterator", None) is not None:  # not when __init__ failed before setting it
            self.close()


def _kill(workers) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=5)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _leave_sigchld_alone(iterator) -> None:
    """Take this loader's workers off torch's SIGCHLD watch list; :meth:`LoaderStream._receive` polls.

    torch's SIGCHLD handler raises a RuntimeError from whatever line the training process is running
    when a worker dies (a loss, a checkpoint write). Unwatched, a dead worker is found by the loader
    while next() waits for a batch, within POLL_SECONDS, and becomes one DataError there.
    """
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling

        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
