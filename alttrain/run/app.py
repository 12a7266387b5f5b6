"""One training run from a composed config: the flow ``scripts/train.py`` and the tests share.

validate the config -> load and check the resume checkpoint -> build -> attach callbacks -> restore
the checkpoint into the trainer -> check the run dir is ours to write -> write .hydra/ -> fit.
Every input is checked before the first file is written, so a failed start never overwrites or
deletes an earlier run's files.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alttrain.callbacks.checkpoint import CheckpointCallback
from alttrain.callbacks.loggers import LogCallback
from alttrain.callbacks.metrics import MetricsCallback
from alttrain.callbacks.profile import ProfileCallback
from alttrain.callbacks.progress import ProgressBar
from alttrain.callbacks.summary import RunSummary
from alttrain.engine.hooks import Callback
from alttrain.engine.trainer import Trainer
from alttrain.errors import AltTrainError, CheckpointError, ConfigError
from alttrain.persist.checkpoint import load_checkpoint, resolve_checkpoint_path
from alttrain.persist.resume import check_same_run, restore_trainer
from alttrain.persist.schema import check_training_payload
from alttrain.run.build import Components, build_components, flat_hparams, sampling_meta
from alttrain.run.cli import Stopped, continue_command
from alttrain.run.config import validate_config
from alttrain.run.loggers import build_callbacks, build_loggers
from alttrain.run.rundir import (
    RunDirLock,
    check_run_dir,
    check_writable,
    write_run_config,
)
from alttrain.run.signals import graceful_stop
from alttrain.scale import processes

log = logging.getLogger("alttrain")

AUTO = "auto"      # resume=auto: continue from the run dir's last checkpoint, or start fresh
COMPLETE = object()  # what load_resume returns for a run that already reached trainer.max_steps


def load_resume(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, Any]:
    """The verified checkpoint ``resume=`` names (path and payload), or ``(None, None)`` for a fresh start.

    ``resume=auto``: the run dir's ``checkpoints/last.pt`` when there is one, else a fresh start, so a
    requeued job is the same command; the payload is :data:`COMPLETE` when that run already finished.
    """
    resume = cfg.get("resume")
    if not resume:
        return None, None
    if resume == AUTO:
        path = run_dir / "checkpoints" / "last.pt"
        if not path.is_file():
            log.info("resume=auto: no checkpoint in %s, starting fresh", run_dir)
            return None, None
    else:
        path = resolve_checkpoint_path(resume)
    payload = load_checkpoint(path)
    step = check_training_payload(payload, path)
    if cfg.trainer.max_steps <= step:
        if resume == AUTO:
            log.info("resume=auto: %s is at step %d = trainer.max_steps, so the run is complete", path, step)
            return path, COMPLETE
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} but {path} is already at step {step}: "
                          f"pass trainer.max_steps=<more than {step}> to train further")
    return path, payload


class DistributedError(AltTrainError):
    """A collective that timed out or lost a peer: one line naming this rank and the step."""


def collective_failure(exc: RuntimeError, trainer: Trainer) -> str | None:
    """One line for a gloo/NCCL timeout or a lost peer under torchrun, else None."""
    replicas, text = trainer.replicas, str(exc)
    if replicas is None:
        return None
    rank, step = replicas.ctx.rank, trainer.state.step
    # gloo words a timeout in several ways: in a collective ("Timed out waiting ..."), and when its
    # timeout closes a connection an all-reduce inside backward waits on ("Application timeout caused
    # pair closure"); NCCL's watchdog in its own.
    timeouts = ("Timed out", "timed out", "Application timeout", "Watchdog caught collective operation timeout")
    if any(words in text for words in timeouts):
        return (f"rank {rank} waited trainer.collective_timeout={replicas.timeout_s:g} s for the other processes at "
                f"step {step}: one of them is stuck, stopped or slower than that (rank 0's evaluations count); "
                "find it, or raise trainer.collective_timeout")
    if "Connection closed by peer" in text or "Connection reset by peer" in text:
        return (f"rank {rank} lost its connection to another process at step {step}: that process ended; its own "
                "output says why")
    return None


def completed_metrics(run_dir: Path, cfg: DictConfig) -> dict[str, float]:
    """The final metrics a completed run wrote (``resume=auto`` of a finished run does nothing else)."""
    record = run_dir / "metrics.json"
    if not record.is_file():
        return {}
    values = json.loads(record.read_text())
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "step"}


def make_callbacks(cfg: DictConfig, comps: Components, run_dir: Path, config_yaml: str) -> list[Callback]:
    # Imported here: they pull in torchvision and torchmetrics, which a start that fails on bad
    # input should not wait for.
    from alttrain.callbacks.samples import SampleCallback
    from alttrain.metrics.evaluate import Evaluator

    t = cfg.trainer
    text = {"config": config_yaml, "param_groups": "\n\n".join(n.summary() for n in comps.networks.values())}
    logger = LogCallback(build_loggers(cfg, run_dir), log_every=t.log_every, text=text, hparams=flat_hparams(cfg))
    callbacks: list[Callback] = [ProgressBar(mode=t.progress)]
    sampler_fn = lambda: comps.sampling_module
    data, conditional = comps.data, comps.generator.conditional
    if comps.prior is not None:
        reference = data.reference(min(1000, data.size or 1000)) if data.kind == "points" else None
        callbacks.append(SampleCallback(run_dir / "samples", t.sample_every, sampler_fn, comps.prior, data.kind,
                                        logger=logger, reference=reference, centers=data.centers,
                                        conditional=conditional))
        encoder = cfg.metrics.get("encoder")
        evaluator = Evaluator(data, sampler_fn, comps.prior, cfg.metrics.num_samples, comps.device, conditional,
                              encoder=comps.networks[encoder].module if encoder else None,
                              inception_weights=cfg.metrics.get("inception_weights"),
                              inception_sha256=cfg.metrics.get("inception_sha256"))
        callbacks.append(MetricsCallback(evaluator, cfg.metrics.eval_every, run_dir / "metrics.json", logger=logger,
                                         info=evaluator.info))
    # Order matters at train end: metrics feed the logger's HParams. The checkpoint comes last at each
    # step end (it holds the other callbacks' state); the final one is written at the last step's end.
    callbacks.append(logger)
    if comps.adaptive is not None:  # augment=ada: moves p after D's updates, logs augment/p and augment/rt
        comps.adaptive.logger = logger
        callbacks.append(comps.adaptive)
    if t.get("profile", False):  # trainer.profile=true: a few steps recorded with torch.profiler
        callbacks.append(ProfileCallback(run_dir / "profile"))
    callbacks += build_callbacks(cfg)  # the callbacks group's: before the checkpoint, which saves their state
    checkpoints = CheckpointCallback(run_dir / "checkpoints", t.checkpoint_every, t.keep_checkpoints, config_yaml,
                                     sampling_meta(cfg, comps))
    metrics = next((c for c in callbacks if isinstance(c, MetricsCallback)), None)
    summary = RunSummary(run_dir, lambda: metrics.final if metrics is not None else {},
                         lambda: checkpoints.ckpt_dir / "last.pt" if checkpoints.last_path is not None else None)
    return callbacks + [summary, checkpoints]  # the summary's train end comes after the final metrics


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] = ()) -> dict[str, float]:
    """Train as configured, writing into ``run_dir``; returns the final metrics.

    Under torchrun every rank calls this; only rank 0 writes (into rank 0's ``run_dir``) and
    returns metrics, the others return ``{}``.
    """
    ctx = processes.setup()
    run_dir = processes.agree_run_dir(run_dir)
    validate_config(cfg)
    resume_path, payload = load_resume(cfg, run_dir)
    if payload is COMPLETE:
        return completed_metrics(run_dir, cfg)
    comps = build_components(cfg)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # the text write_run_config writes below
    # Every rank augments its own batch, so every rank moves ADA's p (the controller agrees it across ranks).
    callbacks = make_callbacks(cfg, comps, run_dir, config_yaml) if ctx.is_main else \
        [c for c in (comps.adaptive,) if c is not None]
    stream = comps.data.stream(seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    t = cfg.trainer
    trainer = Trainer(list(comps.networks.values()), comps.phases, stream, max_steps=t.max_steps,
                      callbacks=callbacks, prior=comps.prior, on_nan=t.on_nan, nan_check_every=t.nan_check_every,
                      audit=t.audit, log_every=t.log_every, precision=comps.precision, ema=comps.ema,
                      replicas=comps.replicas, compile=comps.compile, transforms=comps.transforms,
                      reuse_fakes=t.get("reuse_fakes", "auto"))
    processes.seed_rank(cfg.seed)
    if payload is not None:
        try:
            check_same_run(payload, comps.data.name, ctx.world_size)
            restore_trainer(trainer, payload)
            # Last before training: building the models and callbacks above drew from these streams.
            processes.restore_rank_rng(payload)
        except CheckpointError as exc:
            raise CheckpointError(f"{resume_path}: {exc}") from None
    # Only now, with every input checked, may anything be written.
    lock, failure = RunDirLock(run_dir) if ctx.is_main else None, None  # one writer: rank 0 owns the run dir
    if lock is not None:
        try:
            lock.acquire()
            check_run_dir(run_dir, resume_path, fresh_allowed=cfg.get("resume") == AUTO)
            if resume_path is not None:
                check_writable(run_dir / "checkpoints", "the checkpoints dir")
            lock.mark_owner()
            write_run_config(run_dir, cfg, list(overrides))
        except (AltTrainError, OSError) as exc:
            failure = exc
    processes.agree_started(failure is None)  # under torchrun: the other ranks must not wait for rank 0 forever
    if failure is not None:
        raise failure
    if payload is not None:
        log.info("resumed from %s at step %d", resume_path, trainer.state.step)
    for net in comps.networks.values():
        log.info("\n%s", net.summary())
    try:
        fit(trainer, run_dir)
    finally:
        getattr(stream, "close", lambda: None)()  # data loader workers end with the run, even a failed one
        if lock is not None:
            lock.release()
    return next((c.final for c in callbacks if isinstance(c, MetricsCallback)), {})


def fit(trainer: Trainer, run_dir: Path) -> None:
    """Train, stopping at a step boundary on SIGTERM, SIGUSR1 or SIGINT (see :mod:`alttrain.run.signals`)."""
    try:
        with graceful_stop(trainer):
            trainer.fit()
    except RuntimeError as exc:
        problem = collective_failure(exc, trainer)
        if problem is None:
            raise
        raise DistributedError(problem) from None
    except KeyboardInterrupt:  # a second Ctrl-C
        raise Stopped(signal.SIGINT, f"interrupted at step {trainer.state.step}; the last checkpoint in "
                                     f"{run_dir / 'checkpoints'} is intact; continue with: "
                                     f"{continue_command(run_dir)}") from None
    if trainer.should_stop and trainer.state.step < trainer.max_steps:
        signum = signal.Signals[trainer.stop_requested] if trainer.stop_requested else signal.SIGTERM
        raise Stopped(signum, f"stopped by {signum.name} at step {trainer.state.step}, checkpoint "
                              f"{run_dir / 'checkpoints' / 'last.pt'}; continue with: {continue_command(run_dir)}")
