"""What a run says on the console besides its progress: where it writes at the start, what it did at the end."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from alttrain.engine.hooks import Callback

log = logging.getLogger("alttrain")


class RunSummary(Callback):
    """At start: the run dir and the TensorBoard command. At the end: time, steps/s, metrics, checkpoint.

    ``metrics`` and ``checkpoint`` are read when the run ends (the final metrics, the last checkpoint's path).
    """

    def __init__(self, run_dir: str | Path, metrics: Callable[[], dict] = dict,
                 checkpoint: Callable[[], Path | None] = lambda: None):
        self.run_dir, self.metrics, self.checkpoint = Path(run_dir), metrics, checkpoint
        self._start: tuple[float, int] = (0.0, 0)

    def on_train_start(self, trainer) -> None:
        self._start = (time.perf_counter(), trainer.state.step)
        log.info("run dir: %s  (watch it: tensorboard --logdir %s)", self.run_dir, self.run_dir)

    def on_train_end(self, trainer) -> None:
        seconds = time.perf_counter() - self._start[0]
        steps = trainer.state.step - self._start[1]
        rate = f", {steps / seconds:.3g} steps/s" if seconds > 0 and steps else ""
        metrics = ", ".join(f"{k} {_number(v)}" for k, v in self.metrics().items()) or "no metrics"
        checkpoint = self.checkpoint()
        log.info("done at step %d/%d: %d steps in %s%s; %s; checkpoint %s", trainer.state.step, trainer.max_steps,
                 steps, _duration(seconds), rate, metrics, checkpoint if checkpoint is not None else "none")


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
