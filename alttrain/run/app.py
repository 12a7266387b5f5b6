"""One training run from a composed config: the flow ``scripts/train.py`` and the tests share.

validate the config -> load and check the resume checkpoint -> build -> attach callbacks -> restore
the checkpoint into the trainer -> check the run dir is ours to write -> write .hydra/ -> fit.
Every input is checked before the first file is written, so a failed start never overwrites or
deletes an earlier run's files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alttrain import distributed
from alttrain.build import Components, build_components, flat_hparams
from alttrain.callbacks.base import Callback
from alttrain.callbacks.checkpoint import CheckpointCallback
from alttrain.callbacks.metrics import MetricsCallback
from alttrain.callbacks.progress import ProgressBar
from alttrain.callbacks.tensorboard import TensorBoardLogger
from alttrain.checkpoint import load_checkpoint, resolve_checkpoint_path
from alttrain.config import validate_config
from alttrain.errors import CheckpointError, ConfigError
from alttrain.trainer import Trainer, load_trainer_state

log = logging.getLogger("alttrain")

# Files whose presence means a run dir already holds a run.
RUN_MARKERS = (".hydra/config.yaml", "checkpoints", "metrics.json", "samples")
# Entries a training checkpoint must hold to be resumed from.
RESUME_KEYS = ("trainer", "models", "optimizers", "data", "rng")


def check_run_dir(run_dir: Path, resume_path: Path | None) -> None:
    """Refuse to start a fresh run on top of an earlier one (resuming into it is fine)."""
    taken = [m for m in RUN_MARKERS if (run_dir / m).exists()] + [p.name for p in run_dir.glob("events.out.tfevents.*")]
    if not taken:
        return
    if resume_path is not None and run_dir.resolve() in resume_path.resolve().parents:
        return
    raise ConfigError(f"run dir {run_dir} already holds a run ({taken[0]}); pass resume={run_dir} to continue it, "
                      "or choose another hydra.run.dir")


def load_resume(cfg: DictConfig) -> tuple[Path | None, dict[str, Any] | None]:
    """The verified checkpoint ``resume=`` names (path and payload), or ``(None, None)``."""
    if not cfg.get("resume"):
        return None, None
    path = resolve_checkpoint_path(cfg.resume)
    payload = load_checkpoint(path)
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is not an alttrain training checkpoint (it has no '{missing[0]}' entry); "
                              "pass a checkpoints/last.pt or step_*.pt written by scripts/train.py")
    try:
        step = int(payload["trainer"]["step"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path} holds no valid trainer step; it was not written by scripts/train.py") from None
    if cfg.trainer.max_steps <= step:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps} but {path} is already at step {step}: "
                          f"pass trainer.max_steps=<more than {step}> to train further")
    return path, payload


def write_run_config(run_dir: Path, cfg: DictConfig, overrides: list[str]) -> str:
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    text = OmegaConf.to_yaml(cfg, resolve=True)
    (hydra_dir / "config.yaml").write_text(text)
    (hydra_dir / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(list(overrides))))
    return text


def checkpoint_meta(cfg: DictConfig, comps: Components) -> dict[str, Any]:
    """What scripts/sample.py needs to rebuild the generator without the data set."""
    node = OmegaConf.to_container(cfg.model.generator, resolve=True)
    shape = comps.data.sample_shape
    from alttrain.build import AUTO_FROM_SHAPE

    for key, value in node.items():
        if value == "auto":
            node[key] = AUTO_FROM_SHAPE[key](shape)
    return {"generator": OmegaConf.to_yaml(OmegaConf.create(node)), "sample_shape": list(shape),
            "kind": comps.data.kind, "latent_dim": comps.gan.latent_dim}


def make_callbacks(cfg: DictConfig, comps: Components, run_dir: Path, config_yaml: str) -> list[Callback]:
    # Imported here: they pull in torchvision and torchmetrics, which a start that fails on bad
    # input should not wait for.
    from alttrain.callbacks.samples import SampleCallback
    from alttrain.evaluate import Evaluator

    t = cfg.trainer
    text = {"config": config_yaml, "param_groups": "\n\n".join(n.summary() for n in comps.networks)}
    logger = TensorBoardLogger(run_dir, log_every=t.log_every, text=text, hparams=flat_hparams(cfg))
    generator_fn = lambda: comps.ema.model if comps.ema is not None else comps.generator.module  # noqa: E731
    data = comps.data
    reference = data.reference(min(1000, data.size or 1000)) if data.kind == "points" else None
    samples = SampleCallback(run_dir / "samples", t.sample_every, generator_fn, comps.gan.latent_dim, data.kind,
                             logger=logger, reference=reference, centers=data.centers)
    evaluator = Evaluator(data, generator_fn, comps.gan.latent_dim, cfg.metrics.num_samples, comps.device)
    metrics = MetricsCallback(evaluator, cfg.metrics.eval_every, run_dir / "metrics.json", logger=logger)
    checkpoints = CheckpointCallback(run_dir / "checkpoints", t.checkpoint_every, t.keep_checkpoints, config_yaml,
                                     checkpoint_meta(cfg, comps))
    progress = ProgressBar(mode=t.progress)
    # Order matters at train end: metrics feed the logger's HParams; the checkpoint comes last.
    return [progress, samples, metrics, logger, checkpoints]


def train(cfg: DictConfig, run_dir: str | Path, overrides: list[str] = ()) -> dict[str, float]:
    """Train as configured, writing into ``run_dir``; returns the final metrics.

    Under torchrun every rank calls this; only rank 0 writes (into rank 0's ``run_dir``) and
    returns metrics, the others return ``{}``.
    """
    ctx = distributed.setup()
    run_dir = distributed.agree_run_dir(run_dir)
    validate_config(cfg)
    resume_path, payload = load_resume(cfg)
    comps = build_components(cfg)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)  # the text write_run_config writes below
    callbacks = make_callbacks(cfg, comps, run_dir, config_yaml) if ctx.is_main else []
    stream = comps.data.stream(seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    trainer = Trainer(comps.networks, comps.phases, comps.gan, stream,
                      max_steps=cfg.trainer.max_steps, callbacks=callbacks, on_nan=cfg.trainer.on_nan,
                      nan_check_every=cfg.trainer.nan_check_every,
                      audit=cfg.trainer.audit, log_every=cfg.trainer.log_every, precision=comps.precision,
                      ema=comps.ema, replicas=comps.replicas, compile=comps.compile)
    distributed.seed_rank(cfg.seed)
    if payload is not None:
        try:
            load_trainer_state(trainer, payload)
            # Last before training: building the models and callbacks above drew from these streams.
            distributed.restore_rank_rng(payload)
        except CheckpointError as exc:
            raise CheckpointError(f"{resume_path}: {exc}") from None
    # Only now, with every input checked, may anything be written.
    if ctx.is_main:  # one writer: rank 0 owns the run dir, event files and checkpoints
        check_run_dir(run_dir, resume_path)
        write_run_config(run_dir, cfg, list(overrides))
    if payload is not None:
        log.info("resumed from %s at step %d", resume_path, trainer.state.step)
    for net in comps.networks:
        log.info("\n%s", net.summary())
    trainer.fit()
    metrics = next((c.final for c in callbacks if isinstance(c, MetricsCallback)), {})
    log.info("finished at step %d: %s", trainer.state.step, metrics)
    return metrics
