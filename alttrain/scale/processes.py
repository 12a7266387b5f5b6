"""The training processes ``torchrun`` starts: joining their group, one clock, one run dir, per-rank RNG.

    torchrun --standalone --nproc_per_node=2 scripts/train.py experiment=ring8

:func:`setup` joins the group torchrun describes in the environment (gloo carries CPU tensors, NCCL
CUDA ones) *before* Hydra composes the config, and makes ``${now:...}`` read rank 0's start time on
every rank, so the time-stamped run dir is the same everywhere. :func:`agree_run_dir` hands rank 0's
run dir to every rank all the same; only rank 0 writes files. Each rank draws its own latents
(:func:`seed_rank`); their RNG states travel in the checkpoint (``rng_ranks``) for an exact resume
(:func:`restore_rank_rng`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from alttrain.errors import AltTrainError, ConfigError
from alttrain.scale.rng import derive_seed, restore_rng_state, seed_everything

SALT_RANK = 0x726B
# Rank 0 evaluates metrics and writes checkpoints while the others wait in their next all-reduce.
TIMEOUT = timedelta(minutes=30)


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


def slurm_environment(env: Mapping[str, str]) -> dict[str, str]:
    """torchrun's variables for a process that ``srun`` (or submitit) started as one of several SLURM tasks.

    ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` come from ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``;
    ``MASTER_ADDR`` is the job's first node (submitit's parse of ``SLURM_JOB_NODELIST``) unless set, and
    ``MASTER_PORT`` is derived from the job id unless set. Empty when torchrun's variables are there already
    or the job step has one task.
    """
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return {}
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": env["SLURM_NTASKS"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
    if "MASTER_ADDR" not in env:
        try:
            from submitit.slurm.slurm import _parse_node_list

            out["MASTER_ADDR"] = _parse_node_list(env["SLURM_JOB_NODELIST"])[0]
        except (ImportError, KeyError, IndexError):
            raise ConfigError("SLURM started several tasks but MASTER_ADDR is not set: export MASTER_ADDR=$(scontrol "
                              "show hostnames $SLURM_JOB_NODELIST | head -n 1) in the job script") from None
    out.setdefault("MASTER_PORT", env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)))
    return out


def setup() -> DistContext:
    """Join the process group that torchrun (or SLURM's srun) describes (``WORLD_SIZE`` > 1); a no-op otherwise.

    Idempotent.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    os.environ.update(slurm_environment(os.environ))
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


def teardown(clean: bool = True) -> None:
    """Leave the process group; after a run that ended normally, only once every rank got here.

    A rank that destroys the group while another still talks to it (rank 0 evaluating and writing after
    the last step) can abort in gloo's destructor ("terminate called without an active exception"),
    turning a finished run into a failed job. After an error the barrier is skipped: a peer may be dead.
    """
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
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


def all_gather_bytes(data: bytes, group: Any = None) -> list[bytes]:
    """Every rank's ``data`` (CPU tensors), in rank order, over ``group`` (default: the whole world)."""
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([len(data)], dtype=torch.int64), group=group)
    longest = max(int(s) for s in sizes)
    mine = torch.zeros(longest, dtype=torch.uint8)
    if data:
        mine[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    bufs = [torch.empty(longest, dtype=torch.uint8) for _ in sizes]
    dist.all_gather(bufs, mine, group=group)
    return [b[:int(s)].numpy().tobytes() for b, s in zip(bufs, sizes)]


class PeerFailed(AltTrainError):
    """Another rank of the job could not start; this one stops too."""


def agree_started(ok: bool) -> None:
    """All ranks start training, or none: a rank whose start failed (rank 0's run dir checks) stops the others."""
    if not context().enabled:
        return
    flag = torch.tensor([0 if ok else 1], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if ok and int(flag):
        raise PeerFailed("another process of this torchrun job could not start (its error is above); nothing "
                         "was trained")


def agree_run_dir(run_dir: str | Path) -> Path:
    """Rank 0's run dir, on every rank: ranks that resolved ``${now:}`` apart still share one."""
    if not context().enabled:
        return Path(run_dir)
    return Path(_broadcast_bytes(str(run_dir).encode()).decode())


def seed_rank(seed: int) -> None:
    """Give each rank its own training RNG streams (latents, dropout) derived from ``seed``.

    Called after the networks are built (from ``seed`` alike on every rank). With one stream for
    all, every rank would draw the same fakes. Single-process runs are left untouched.
    """
    ctx = context()
    if ctx.enabled:
        seed_everything(derive_seed(seed, SALT_RANK, ctx.rank))


def restore_rank_rng(payload: Mapping[str, Any]) -> None:
    """Restore this rank's RNG streams from a checkpoint (``rng`` is rank 0's, ``rng_ranks`` everyone's)."""
    ctx, states = context(), payload.get("rng_ranks")
    if ctx.enabled and states is not None and len(states) == ctx.world_size:
        restore_rng_state(states[ctx.rank])
        return
    restore_rng_state(payload["rng"])
    if ctx.rank > 0:  # saved by a different number of processes: distinct fresh streams per rank
        seed_everything(derive_seed(SALT_RANK, ctx.rank, int(payload["trainer"]["step"])))
