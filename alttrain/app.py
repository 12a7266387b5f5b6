"""One training run from a composed config: the flow ``scripts/train.py`` and the tests share.

validate + build (nothing written yet) -> check the run dir is ours to write -> load the resume
checkpoint -> write .hydra/ -> attach callbacks -> fit -> final metrics.
A failed start therefore never overwrites or deletes an earlier run's files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alttrain.build import Components, build_components, flat_hparams
from alttrain.callbacks.base import Callback
from alttrain.callbacks.checkpoint import CheckpointCallback
from alttrain.callbacks.metrics import MetricsCallback
from alttrain.callbacks.progress import ProgressBar
from alttrain.callbacks.samples import SampleCallback
from alttrain.callbacks.tensorboard import TensorBoardLogger
from alttrain.checkpoint import load_checkpoint, resolve_checkpoint_path, restore_rng_state
from alttrain.errors import ConfigError
from alttrain.evaluate import Evaluator
from alttrain.trainer import Trainer, load_trainer_state

log = logging.getLogger("alttrain")

# Files whose presence means a run dir already holds a run.
RUN_MARKERS = (".hydra/config.yaml", "checkpoints", "metrics.json", "samples")


def check_run_dir(run_dir: Path, resume_path: Path | None) -> None:
    """Refuse to start a fresh run on top of an earlier one (resuming into it is fine)."""
    taken = [m for m in RUN_MARKERS if (run_dir / m).exists()] + [p.name for p in run_dir.glob("events.out.tfevents.*")]
    if not taken:
        return
    if resume_path is not None and run_dir.resolve() in resume_path.resolve().parents:
        return
    raise ConfigError(f"run dir {run_dir} already holds a run ({taken[0]}); pass resume={run_dir} to continue it, "
                      "or choose another hydra.run.dir")


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
    t = cfg.trainer
    text = {"config": config_yaml, "param_groups": "\n\n".join(n.summary() for n in comps.networks)}
    logger = TensorBoardLogger(run_dir, log_every=t.log_every, text=text, hparams=flat_hparams(cfg))
    generator_fn = lambda: comps.generator.module  # noqa: E731
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
    """Train as configured, writing into ``run_dir``; returns the final metrics."""
    run_dir = Path(run_dir)
    resume_path = resolve_checkpoint_path(cfg.resume) if cfg.get("resume") else None
    comps = build_components(cfg)
    check_run_dir(run_dir, resume_path)
    payload = load_checkpoint(resume_path) if resume_path is not None else None
    config_yaml = write_run_config(run_dir, cfg, list(overrides))
    callbacks = make_callbacks(cfg, comps, run_dir, config_yaml)
    trainer = Trainer(comps.networks, comps.phases, comps.gan, comps.data.stream(seed=cfg.seed),
                      max_steps=cfg.trainer.max_steps, callbacks=callbacks, on_nan=cfg.trainer.on_nan,
                      audit=cfg.trainer.audit, log_every=cfg.trainer.log_every, precision=comps.precision)
    if payload is not None:
        load_trainer_state(trainer, payload)
        restore_rng_state(payload["rng"])
        log.info("resumed from %s at step %d", resume_path, trainer.state.step)
    for net in comps.networks:
        log.info("\n%s", net.summary())
    trainer.fit()
    metrics = next(c for c in callbacks if isinstance(c, MetricsCallback)).final
    log.info("finished at step %d: %s", trainer.state.step, metrics)
    return metrics
