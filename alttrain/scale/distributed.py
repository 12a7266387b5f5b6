"""Data-parallel training: one replica of every network per process (the processes: :mod:`.processes`).

* **DDP per network and param set** (:meth:`Replicas.wrap`), built while exactly the parameters
  its phase trains require grad: DDP registers only those, so freezing needs no
  ``find_unused_parameters``. Buffers are not broadcast in ``forward``: D runs forward twice
  (real, fake) before one backward, and a broadcast would overwrite BatchNorm statistics the
  first graph saved.
* **Agreement at checkpoints** (:meth:`Replicas.sync`): rank 0's buffers are broadcast (BatchNorm
  running statistics drift apart per data shard; they never affect a training-mode forward), then
  a fingerprint of every parameter, buffer and optimizer-state tensor is compared across ranks;
  a difference raises :class:`ReplicaDivergence` on every rank.
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from alttrain.errors import ConfigError
from alttrain.scale.processes import DistContext, all_gather_bytes, context
from alttrain.scale.rng import capture_rng_state

# torch >= 2.14 renamed broadcast_buffers; both mean "no buffer broadcast in forward".
_NO_FORWARD_BROADCAST = ({"forward_sync_buffers": False}
                         if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                         else {"broadcast_buffers": False})


class ReplicaDivergence(AssertionError):
    """Ranks that should hold identical weights do not."""


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
                 check: bool = True, sync_every: int = 0, timeout_s: float | None = None):
        device = torch.device(device)
        if sync_batchnorm and device.type != "cuda":
            raise ConfigError("trainer.sync_batchnorm=true needs CUDA devices (torch's SyncBatchNorm has no CPU "
                              "kernel); set trainer.sync_batchnorm=false")
        if device.type == "cuda" and device.index not in (None, ctx.local_rank):
            raise ConfigError(f"under torchrun each process uses cuda:LOCAL_RANK, but device={device}; "
                              "set device=auto or device=cuda")
        self.ctx, self.device, self.sync_batchnorm = ctx, device, sync_batchnorm
        self.check, self.sync_every = check, sync_every
        self._stop_flag: torch.Tensor | None = None
        self._stop_work: Any = None
        # Training's collectives run in a group of their own, created with the configured timeout (the
        # default group was made before the config was read, to share rank 0's clock). All ranks build
        # their Replicas at the same point, as new_group requires.
        self.timeout_s = timeout_s
        self.group = dist.new_group(timeout=timedelta(seconds=timeout_s)) if timeout_s is not None else None
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
        return DistributedDataParallel(module, device_ids=device_ids, process_group=self.group,
                                       **_NO_FORWARD_BROADCAST)

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.group)
        return bool(t.item())

    def agree_stop(self, asked: bool) -> bool:
        """Whether some rank had asked to stop by the previous step: the same answer on every rank.

        The all-reduce of this step's flag runs in the background while the next step trains and is
        collected at its end, so agreeing costs no wait; the ranks stop one step after the request.
        The flag is a CPU tensor, which gloo carries whatever the training device: no device sync.
        """
        agreed = self._collect_stop()
        self._stop_flag = torch.tensor([int(asked)], dtype=torch.int32)
        self._stop_work = dist.all_reduce(self._stop_flag, op=dist.ReduceOp.MAX, async_op=True, group=self.group)
        return agreed

    def finish_stop_agreement(self) -> None:
        """Complete the last background all-reduce (every rank has exactly one in flight at the end)."""
        self._collect_stop()

    def _collect_stop(self) -> bool:
        if self._stop_work is None:
            return False
        self._stop_work.wait()
        self._stop_work = None
        return bool(self._stop_flag.item())

    def sync(self, modules: Sequence[nn.Module], named: Sequence[tuple[str, torch.Tensor]]) -> list[dict]:
        """Broadcast rank 0's buffers of ``modules``, check ``named`` tensors agree; returns every rank's RNG state."""
        with torch.no_grad():
            for module in modules:
                for buf in module.buffers():
                    dist.broadcast(buf, src=0, group=self.group)
        if self.check:
            self.check_identical(named)
        return self.gather_rng()

    def check_identical(self, named: Sequence[tuple[str, torch.Tensor]]) -> None:
        """Raise :class:`ReplicaDivergence` on every rank unless all ranks hold bit-identical ``named`` tensors."""
        mine = fingerprint((t for _, t in named), self.device)
        reference = mine.clone()
        dist.broadcast(reference, src=0, group=self.group)
        flags = torch.zeros(len(named) + self.world_size, dtype=torch.int64, device=self.device)
        differs = (mine != reference).any(dim=1)
        flags[:len(named)] = differs.to(torch.int64)
        flags[len(named) + self.ctx.rank] = int(differs.any())
        dist.all_reduce(flags, group=self.group)  # per tensor: how many ranks differ; per rank: whether it does
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
        return [torch.load(io.BytesIO(b), weights_only=True) for b in all_gather_bytes(buf.getvalue(), self.group)]


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
                  sync_every: int = 0, timeout_s: float | None = None) -> Replicas | None:
    """A :class:`Replicas` for this process group, or ``None`` in a single-process run."""
    ctx = context()
    return Replicas(ctx, device, sync_batchnorm, check, sync_every, timeout_s) if ctx.enabled else None
