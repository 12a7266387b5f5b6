"""On resume, what comes from the checkpoint and what from the config.

The checkpoint holds progress: weights, optimizer moments, schedule positions, counters, RNG
states. The config holds settings. torch's ``load_state_dict`` restores an optimizer's or a
scheduler's settings along with its progress, so a setting changed on resume (a lower lr, other
betas, a longer decay) would be ignored without a word. Here:

* an optimizer's hyper-parameters (``lr``, ``betas``, ``weight_decay``, ...) are the config's:
  each one that differs from the checkpoint's is put back after loading, and logged; one that the
  saved state cannot follow (turning Adam's ``amsgrad`` on or off) is refused;
* a network with a scheduler continues from the checkpoint with the checkpoint's settings, its
  schedule's included: a changed base lr or schedule setting gets a warning that says so;
* a schedule the config no longer has ends: the lr is the config's constant, with a warning.

With an unchanged config nothing differs and the resume stays bit-exact. :func:`restore_trainer`
puts a checkpoint into a freshly built trainer.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from alttrain.engine.network import Network
from alttrain.engine.trainer import Trainer
from alttrain.errors import CheckpointError
from alttrain.persist.checkpoint import load_into
from alttrain.persist.schema import train_state

log = logging.getLogger("alttrain")

_NOT_SETTINGS = {"params", "param_names", "name"}  # a group's tensors and identity
# Options whose change would need optimizer state the checkpoint does not hold (amsgrad: Adam's
# max_exp_avg_sq, which torch would look up, and miss, at the first step).
_FIXED_ON_RESUME = {"amsgrad"}


def config_settings(net: Network) -> list[dict[str, Any]]:
    """The config's hyper-parameters of each of ``net``'s param groups: call before loading the checkpoint."""
    return [{k: v for k, v in group.items() if k not in _NOT_SETTINGS} for group in net.optimizer.param_groups]


def restore_config_settings(net: Network, settings: list[dict[str, Any]]) -> None:
    """Put the config's ``settings`` back into ``net``'s loaded optimizer (see the module docstring).

    A network with a scheduler keeps the checkpoint's settings: a schedule may own more than the
    lr (OneCycleLR cycles Adam's betas), so only a changed base lr can be told from its progress.
    """
    for group, wanted in zip(net.optimizer.param_groups, settings):
        where = f"optim.{net.name} param group {group.get('name')!r}"
        if net.scheduler is not None:
            if "initial_lr" in group and not _same(group["initial_lr"], wanted.get("initial_lr")):
                log.warning("%s: lr %s in the config, %s in the checkpoint; its scheduler continues from the "
                            "checkpoint with the base lr %s (start a new run to change it)",
                            where, wanted.get("initial_lr"), group["initial_lr"], group["initial_lr"])
            continue
        for key, value in wanted.items():
            if key in group and not _same(group[key], value):
                if key in _FIXED_ON_RESUME:
                    raise CheckpointError(f"{where}: {key} is {value} in the config, {group[key]} in the checkpoint, "
                                          f"and the checkpoint's optimizer state does not fit the change; resume "
                                          f"with {key}: {group[key]}, or start a new run")
                log.info("%s: %s is %s in the config, %s in the checkpoint; using the config's", where, key, value,
                         group[key])
                group[key] = value


def warn_schedule_differences(net: Network, saved: dict[str, Any] | None) -> None:
    """Warn where ``net``'s scheduler from the config and the checkpoint's (``saved``) disagree."""
    if net.scheduler is None:
        if saved is not None:  # restore_config_settings has put the config's constant lr back
            log.warning("the checkpoint's %s lr follows a scheduler that optim.%s.scheduler no longer sets: from "
                        "here on its lr is the config's constant", net.name, net.name)
        return
    if saved is None:
        return
    for key, value, there in changed_scheduler_settings(net.scheduler, saved):
        log.warning("optim.%s.scheduler.%s is %s in the config, %s in the checkpoint; a resumed schedule continues "
                    "with the checkpoint's (start a new run to change it)", net.name, key, value, there)


def changed_scheduler_settings(scheduler: LRScheduler, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, config value, checkpoint value)`` for each setting of ``scheduler`` that ``saved`` changes.

    A setting is a constructor argument kept under its own name (``StepLR.step_size``,
    ``PiecewiseLinearLR.points``, ``CosineAnnealingLR.T_max``); the rest of a scheduler's state is
    its progress, which the checkpoint rightly restores.
    """
    current = scheduler.state_dict()
    names = [n for n in inspect.signature(type(scheduler).__init__).parameters if n not in ("self", "optimizer")]
    return [(n, current[n], saved[n]) for n in names
            if n in current and n in saved and n != "last_epoch" and not _same(current[n], saved[n])]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def restore_trainer(trainer: Trainer, state: dict[str, Any]) -> None:
    """Restore a checked payload into ``trainer`` (models first, so a shape mismatch is named early)."""
    for net in trainer.networks:
        if net.name not in state["models"]:
            raise CheckpointError(f"the checkpoint has no network '{net.name}' (it has "
                                  f"{', '.join(state['models'])}); resume with the same model config")
        load_into(net.module, state["models"][net.name], net.name)
    for net in trainer.networks:
        settings = config_settings(net)
        try:
            net.optimizer.load_state_dict(state["optimizers"][net.name])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint's {net.name} optimizer does not fit this run's param groups "
                                  f"({exc}); resume with the same optim.{net.name}.param_groups") from None
        restore_config_settings(net, settings)
    trainer.stream.load_state_dict(state["data"])
    trainer.precision.load_state_dict(state.get("precision", {}))
    if trainer.ema is not None:
        if "ema" not in state:
            raise CheckpointError("this run has an EMA generator but the checkpoint holds none; "
                                  "resume with the original trainer.ema settings")
        load_into(trainer.ema.model, state["ema"]["model"], "EMA generator")
        trainer.ema.load_state_dict(state["ema"])
    schedulers = state.get("schedulers", {})
    for net in trainer.networks:
        schedule = schedulers.get(net.name)
        warn_schedule_differences(net, schedule)
        if net.scheduler is None:
            continue
        if schedule is None:
            raise CheckpointError(f"this run has a {net.name} lr scheduler but the checkpoint holds none for it; "
                                  f"resume with the original optim.{net.name}.scheduler")
        net.scheduler.load_state_dict(schedule)
    restore_transforms(trainer, state.get("augment", {}))
    trainer.callbacks.load_state_dict(state.get("callbacks", {}))
    saved = train_state(state["trainer"])
    # Phases added on resume start their counters at zero.
    saved.phase_updates = {p.name: saved.phase_updates.get(p.name, 0) for p in trainer.phases}
    saved.skipped = {p.name: saved.skipped.get(p.name, 0) for p in trainer.phases}
    trainer.state = saved


def restore_transforms(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Give each input transform with state (an augmentation) its saved state; one the checkpoint has
    none for (augmentation switched on at resume) starts fresh, with a warning."""
    for name, fn in trainer.transforms.items():
        if not hasattr(fn, "load_state_dict"):
            continue
        if name not in saved:
            log.warning("the checkpoint holds no augmentation state for %s (it was trained without augment=): "
                        "its augmentation starts fresh", name)
            continue
        fn.load_state_dict(saved[name])


def check_same_run(payload: dict[str, Any], data_name: str, world_size: int) -> None:
    """Refuse a resume on another data set or another number of processes, in one line each.

    A stream position means nothing for another data set, and each process's shard and the effective
    batch (``data.batch_size`` x processes) depend on the process count, so neither resume could be exact.
    Checkpoints that do not record these (alttrain 0.1) are not checked.
    """
    meta = payload.get("meta") or {}
    saved = meta.get("data")
    if saved is not None and saved != data_name:
        raise CheckpointError(f"the checkpoint was trained on {saved} and this run's data is {data_name}: resume "
                              f"with the data it was trained on (data={saved}, or its experiment), or start a new run")
    processes = meta.get("world_size", len(payload["rng_ranks"]) if "rng_ranks" in payload else None)
    if processes is not None and int(processes) != world_size:
        raise CheckpointError(f"the checkpoint was written by {processes} process(es) and this run has {world_size}: "
                              f"resume with the same number (torchrun --nproc_per_node={processes}); each process's "
                              "data shard and the effective batch (data.batch_size x processes) depend on it")
