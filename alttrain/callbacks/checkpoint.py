"""Checkpoints every ``every`` steps and at the end: ``checkpoints/step_XXXXXXXX.pt`` and ``last.pt``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alttrain.callbacks.base import Callback
from alttrain.checkpoint import capture_rng_state, save_rotating

FORMAT_VERSION = 1


class CheckpointCallback(Callback):
    """Writes everything an exact resume needs: trainer state, RNG states, the config and metadata.

    ``meta`` holds what ``scripts/sample.py`` needs without the data set (generator config, sample
    shape, kind). Saved after the step's other callbacks, none of which touches the training RNG.
    """

    def __init__(self, ckpt_dir: str | Path, every: int, keep: int, config_yaml: str, meta: dict[str, Any]):
        self.ckpt_dir, self.every, self.keep = Path(ckpt_dir), every, keep
        self.config_yaml, self.meta = config_yaml, meta
        self.last_saved: int | None = None
        self.last_path: Path | None = None

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0:
            self.save(trainer)

    def on_train_end(self, trainer) -> None:
        if self.last_saved != trainer.state.step:
            self.save(trainer)

    def save(self, trainer) -> Path:
        trainer.verify_finite()  # a checkpoint never holds the result of a non-finite update
        payload = trainer.state_dict()
        payload.update(format=FORMAT_VERSION, rng=capture_rng_state(), config=self.config_yaml, meta=self.meta)
        self.last_path = save_rotating(payload, self.ckpt_dir, trainer.state.step, keep=self.keep)
        self.last_saved = trainer.state.step
        return self.last_path
