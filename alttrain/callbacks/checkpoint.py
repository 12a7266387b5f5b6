"""Checkpoints every ``every`` steps and at the end: ``checkpoints/step_XXXXXXXX.pt`` and ``last.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alttrain.engine.hooks import Callback
from alttrain.persist.checkpoint import save_rotating
from alttrain.persist.schema import build_payload
from alttrain.scale.rng import capture_rng_state


class CheckpointCallback(Callback):
    """Writes everything an exact resume needs (:mod:`alttrain.persist.schema`), the config and metadata.

    ``meta`` holds what ``scripts/sample.py`` needs without the data set (the sampling network's
    config, latent shape, sample shape, kind). Saved after the step's other callbacks, none of which
    touches the training RNG, the last step included, so that a failure in the final evaluation (which
    runs at train end) cannot lose the steps since the last periodic checkpoint.
    """

    def __init__(self, ckpt_dir: str | Path, every: int, keep: int, config_yaml: str, meta: dict[str, Any]):
        self.ckpt_dir, self.every, self.keep = Path(ckpt_dir), every, keep
        self.config_yaml, self.meta = config_yaml, meta
        self.last_saved: int | None = None
        self.last_path: Path | None = None

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        # The last step is saved here, after this step's other callbacks and before on_train_end's final
        # evaluation: an evaluation that fails (out of memory, a full disk) cannot cost the run's steps.
        if (self.every and step % self.every == 0) or step >= trainer.max_steps or trainer.should_stop:
            self.save(trainer)

    def on_train_end(self, trainer) -> None:
        if self.last_saved != trainer.state.step:
            self.save(trainer)

    def save(self, trainer) -> Path:
        trainer.verify_finite()  # a checkpoint never holds the result of a non-finite update
        payload = build_payload(trainer, rng=capture_rng_state(), config=self.config_yaml, meta=self.meta)
        self.last_path = save_rotating(payload, self.ckpt_dir, trainer.state.step, keep=self.keep)
        self.last_saved = trainer.state.step
        return self.last_path
