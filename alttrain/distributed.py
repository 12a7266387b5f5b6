"""Data-parallel training over processes started by ``torchrun``: one replica of every network per process.

    torchrun --standalone --nproc_per_node=2 scripts/train.py experiment=ring8

* **One process group, one clock, one run dir.** :func:`setup` joins the group torchrun describes
  in the environment (gloo carries CPU tensors, NCCL CUDA ones) *before* Hydra composes the
  config, and makes ``${now:...}`` read rank 0's start time on every rank, so the time-stamped
  run dir is the same everywhere. :func:`agree_run_dir` hands rank 0's run dir to every rank all
  the same; only rank 0 writes files.
* **DDP per network and param set** (:meth:`Replicas.wrap`), built while exactly the parameters
  its phase trains require grad: DDP registers only those, so freezing needs no
  ``find_unused_parameters``. Buffers are not broadcast in ``forward``: D runs forward twice
  (real, fake) before one backward, and a broadcast would overwrite BatchNorm statistics the
  first graph saved.
* **Agreement at checkpoints** (:meth:`Replicas.sync`): rank 0's buffers are broadcast (BatchNorm
  running statistics drift apart per data shard; they never affect a training-mode forward), then
  a fingerprint of every parameter, buffer and optimizer-state tensor is compared across ranks;
  a difference raises :class:`ReplicaDivergence` on every rank.
* **Per-rank randomness** (:func:`seed_rank`): each rank draws its own latents; their RNG states
  travel in the checkpoint (``rng_ranks``) for an exact resume (:func:`restore_rank_rng`).
"""

from __future__ import annotations

import inspect
import io
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from alttrain.data.source import derive_seed
from alttrain.errors import ConfigError
from alttrain.rng import capture_rng_state, restore_rng_state

SALT_RANK = 0x726B
# Rank 0 evaluates metrics and writes checkpoints while the others wait in their next all-reduce.
TIMEOUT = timedelta(minutes=30)
# torch >= 2.14 renamed broadcast_buffers; both mean "no buffer broadcast in forward".
_NO_FORWARD_BROADCAST = ({"forward_sync_buffers": False}
                         if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                         else {"broadcast_buffers": False})


class ReplicaDivergence(AssertionError):
    """Ranks that should hold identical weights do not."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands among the training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """This process's place; rank 0 of 1 when no process group is up."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def setup() -> DistContext:
    """Join the process group that torchrun describes (``WORLD_SIZE`` > 1); a no-op otherwise. Idempotent."""
    if dist.is_available() and dist.is_initialized():
        return context()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistContext()
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # "cuda" now means this rank's GPU
        backend = "cpu:gloo,cuda:nccl"  # CPU tensors (clock, run dir, RNG states) always go by gloo
    dist.init_process_group(backend, timeout=TIMEOUT)
    _share_clock()
    if dist.get_rank() != 0:
        logging.getLogger("alttrain").setLevel(logging.WARNING)  # the run's log lines once, from rank 0
    return context()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _share_clock() -> None:
    """Make Hydra's ``${now:...}`` read rank 0's start time on every rank."""
    import hydra.core.utils as hydra_utils

    stamp = torch.tensor([time.time()], dtype=torch.float64)
    dist.broadcast(stamp, src=0)
    start = datetime.fromtimestamp(float(stamp))

    class RankZeroClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return start if tz is None else start.astimezone(tz)

    # Hydra's resolver is `lambda pattern: datetime.now().strftime(pattern)` over its module global,
    # re-registered at every launch (so a resolver of our own would be replaced): swap the clock.
    hydra_utils.datetime = RankZeroClock


def _broadcast_bytes(data: bytes) -> bytes:
    """Rank 0's ``data`` on every rank (CPU tensors: gloo carries them whatever the device)."""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, src=0)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if dist.get_rank() == 0 and data \
        else torch.empty(int(size), dtype=torch.uint8)
    dist.broadcast(buf, src=0)
    return buf.numpy().tobytes()


def _all_gather_bytes(data: bytes) -> list[bytes]:
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64))
    longest = max(int(s) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if data:
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    bufs = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(bufs, mine)
    return [b[:int(s)].numpy().tobytes() for b, s in zip(bufs, sizes)]


def agree_run_dir(run_dir: str | Path) -> Path:
    """Rank 0's run dir, on every rank: ranks that resolved ``${now:}`` apart still share one."""
    if not context().enabled:
        return Path(run_dir)
    return Path(_broadcast_bytes(str(run_dir).encode()).decode())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank(seed: int) -> None:
    """Give each rank its own training RNG streams (latents, dropout) derived from ``seed``.

    Called after the networks are built (from ``seed`` alike on every rank). With one stream for
    all, every rank would draw the same fakes. Single-process runs are left untouched.
    """
    ctx = context()
    if ctx.enabled:
        _seed_all(derive_seed(seed, SALT_RANK, ctx.rank))


def restore_rank_rng(payload: Mapping[str, Any]) -> None:
    """Restore this rank's RNG streams from a checkpoint (``rng`` is rank 0's, ``rng_ranks`` everyone's)."""
    ctx, states = context(), payload.get("rng_ranks")
    if ctx.enabled and states is not None and len(states) == ctx.world_size:
        restore_rng_state(states[ctx.rank])
        return
    restore_rng_state(payload["rng"])
    if ctx.rank > 0:  # saved by a different number of processes: distinct fresh streams per rank
        _seed_all(derive_seed(SALT_RANK, ctx.rank, int(payload["trainer"]["step"])))


def fingerprint(tensors: Iterable[torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, 2)`` int64 checksums of each tensor's bits: plain and position-weighted word sums.

    Any change of a single element changes the plain sum; the weighted one also catches swaps.
    Integer arithmetic wraps around, identically on every rank.
    """
    words_of = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    rows = []
    for t in tensors:
        words = t.detach().reshape(-1).view(words_of[t.element_size()]).to(torch.int64)
        weights = torch.arange(1, words.numel() + 1, dtype=torch.int64, device=words.device)
        rows.append(torch.stack([words.sum(), (words * weights).sum()]).to(device))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.int64, device=device)


class Replicas:
    """The training processes as the trainer sees them.

    ``sync_every``: steps between agreements (the checkpoint interval; 0 = only at the end).
    ``check``: compare fingerprints at each agreement. ``sync_batchnorm``: convert BatchNorm layers
    to ``SyncBatchNorm`` (statistics over the global batch; CUDA only).
    """

    def __init__(self, ctx: DistContext, device: torch.device, sync_batchnorm: bool = False,
                 check: bool = True, sync_every: int = 0):
        device = torch.device(device)
        if sync_batchnorm and device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                              "kernel); set trainer.sync_batchnorm=false")
        if device.type == "cuda" and device.index not in (None, ctx.local_rank):
            raise ConfigError(f"under torchrun each process uses cuda:LOCAL_RANK, but device={device}; "
                              "set device=auto or device=cuda")
        self.ctx, self.device, self.sync_batchnorm = ctx, device, sync_batchnorm
        self.check, self.sync_every = check, sync_every

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    def prepare(self, module: nn.Module) -> None:
        """Swap BatchNorm layers for SyncBatchNorm in place (same parameter and buffer tensors)."""
        if not self.sync_batchnorm:
            return
        if nn.SyncBatchNorm.convert_sync_batchnorm(module) is not module:
            raise ConfigError(f"trainer.sync_batchnorm cannot convert a {type(module).__name__} that is itself "
                              "a BatchNorm layer; wrap it in a container module")

    def wrap(self, module: nn.Module) -> DistributedDataParallel:
        """DDP over ``module``, registering exactly the parameters that require grad now."""
        device_ids = [self.device.index if self.device.index is not None else self.ctx.local_rank] \
            if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids, **_NO_FORWARD_BROADCAST)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def sync(self, modules: Sequence[nn.Module], named: Sequence[tuple[str, torch.Tensor]]) -> list[dict]:
        """Broadcast rank 0's buffers of ``modules``, check ``named`` tensors agree; returns every rank's RNG state."""
        with torch.no_grad():
            for module in modules:
                for buf in module.buffers():
                    dist.broadcast(buf, src=0)
        if self.check:
            self.check_identical(named)
        return self.gather_rng()

    def check_identical(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Raise :class:`ReplicaDivergence` on every rank unless all ranks hold bit-identical ``named`` tensors."""
        mine = fingerprint((t for _, t in named), self.device)
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        flags = torch.zeros(len(named) + self.world_size, dtype=torch.int64, device=self.device)
        differs = (mine != reference).any(dim=1)
        flags[:len(named)] = differs.to(torch.int64)
        flags[len(named) + self.ctx.rank] = int(differs.any())
        dist.all_reduce(flags)  # per tensor: how many ranks differ; per rank: whether it does
        flags = flags.tolist()
        if any(flags):
            names = [name for (name, _), n in zip(named, flags) if n]
            ranks = [r for r, n in enumerate(flags[len(named):]) if n]
            raise ReplicaDivergence(
                f"rank(s) {', '.join(map(str, ranks))} hold values different from rank 0 in {len(names)} tensor(s), "
                f"first {', '.join(names[:3])}: the replicas diverged (an op that is not deterministic across "
                "processes, or code that changed weights on some ranks only)")

    def gather_rng(self) -> list[dict]:
        """Every rank's RNG state (``capture_rng_state``), in rank order."""
        buf = io.BytesIO()
        torch.save(capture_rng_state(), buf)
        return [torch.load(io.BytesIO(b), weights_only=True) for b in _all_gather_bytes(buf.getvalue())]


def zero_tie(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """0 times one element of every parameter, to add to a loss: each parameter gets a (zero) gradient.

    An input-gradient penalty (R1) leaves some parameters without a gradient (D's output bias), and
    DDP's reducer would wait for them forever; StyleGAN2-ADA adds ``logits * 0`` for the same reason.
    """
    return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0


def replica_tensors(networks: Sequence[Any], ema: Any = None) -> list[tuple[str, torch.Tensor]]:
    """Every tensor that must be identical on all ranks: weights, buffers, optimizer and EMA state."""
    named = []
    for net in networks:
        named += [(f"{net.name}.{k}", t) for k, t in net.module.state_dict().items()]
        for i, state in enumerate(net.optimizer.state_dict()["state"].values()):
            named += [(f"{net.name} optimizer state {i}.{k}", t) for k, t in state.items() if torch.is_tensor(t)]
    if ema is not None:
        named += [(f"ema.{k}", t) for k, t in ema.model.state_dict().items()]
    return named


def make_replicas(device: torch.device, sync_batchnorm: bool = False, check: bool = True,
                  sync_every: int = 0) -> Replicas | None:
    """A :class:`Replicas` for this process group, or ``None`` in a single-process run."""
    ctx = context()
    return Replicas(ctx, device, sync_batchnorm, check, sync_every) if ctx.enabled else None
