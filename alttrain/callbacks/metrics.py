"""Evaluates the generator every ``every`` steps and at the end; writes ``metrics.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from alttrain.callbacks.base import Callback


class MetricsCallback(Callback):
    """``evaluate()`` returns ``{name: float}``; results go to the logger and, at the end, to a JSON file.

    Must come before the TensorBoard logger in the callback list, so the logger's HParams entry
    sees the final metrics.
    """

    def __init__(self, evaluate: Callable[[], dict[str, float]], every: int, json_path: str | Path | None,
                 logger=None):
        self.evaluate, self.every, self.logger = evaluate, every, logger
        self.json_path = Path(json_path) if json_path else None
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self._run(step)

    def on_train_end(self, trainer) -> None:
        self.final = self._run(trainer.state.step)
        if self.logger is not None:
            self.logger.set_final_metrics(self.final)
        if self.json_path is not None:
            record = {"step": trainer.state.step, **self.final, "history": self.history}
            tmp = self.json_path.with_name(f".{self.json_path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(record, indent=2) + "\n")
            os.replace(tmp, self.json_path)

    def _run(self, step: int) -> dict[str, float]:
        metrics = self.evaluate()
        self.history.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step)
        return metrics
