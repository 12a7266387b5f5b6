"""Evaluates the generator every ``every`` steps and at the end; writes ``metrics.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from alttrain.engine.hooks import Callback


class MetricsCallback(Callback):
    """``evaluate()`` returns ``{name: float}``; results go to the logger and, at the end, to a JSON file.

    Must come before the logger in the callback list, so the logger's HParams entry sees the final
    metrics. The history of evaluations travels in checkpoints, so a resumed run's ``metrics.json``
    lists the evaluations before the interruption too.

    ``info`` (strings, numbers, lists and dicts: how the metrics were measured, a note on those that
    did not run) is written into ``metrics.json`` beside the final values; it never reaches the
    logger or the history, which hold numbers only.
    """

    def __init__(self, evaluate: Callable[[], dict[str, float]], every: int, json_path: str | Path | None,
                 logger=None, info: Mapping[str, Any] | None = None):
        self.evaluate, self.every, self.logger = evaluate, every, logger
        self.info = dict(info or {})
        self.json_path = Path(json_path) if json_path else None
        self.history: list[dict[str, float]] = []
        self.final: dict[str, float] = {}

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        if self.every and step % self.every == 0 and step < trainer.max_steps:
            self._run(step)

    def on_train_end(self, trainer) -> None:
        if trainer.should_stop and trainer.state.step < trainer.max_steps:
            return  # stopped early (a signal: a job about to be killed has no time to spare): no final evaluation
        self.final = self._run(trainer.state.step)
        if self.logger is not None:
            self.logger.set_final_metrics(self.final)
        if self.json_path is not None:
            record = {"step": trainer.state.step, **self.final, **self.info, "history": self.history}
            tmp = self.json_path.with_name(f".{self.json_path.name}.tmp-{os.getpid()}")
            try:
                with open(tmp, "w") as f:
                    f.write(json.dumps(record, indent=2) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.json_path)
            finally:
                tmp.unlink(missing_ok=True)

    def _run(self, step: int) -> dict[str, float]:
        metrics = self.evaluate()
        # A resumed run re-evaluates at the step it resumed from only if that was an evaluation step.
        self.history = [h for h in self.history if h["step"] != step]
        self.history.append({"step": step, **metrics})
        if self.logger is not None:
            self.logger.log_metrics(metrics, step)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]} if self.history else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
