"""Gathers the trainer's scalars per log step and hands them, with images, text and metrics, to every logger.

Everything the trainer reports stays on the device until a *log step* (``step % log_every == 0``);
then all of that step's values are converted with a single host sync. Other steps cost an integer
test or two per hook call. Scalars, at ``global_step`` = the step an update belongs to:

* ``loss/<phase>``: the mean over the phase's updates in that step (``repeat > 1``, e.g.
  ``n_critic``), so a 5-update D step is one point, comparable across ``repeat`` settings.
  Updates discarded as non-finite (``on_nan=skip``) are left out; ``skipped/<phase>`` counts them.
* every reported scalar under its own name (``score/real``, ``grad_norm/D/body``, ...): the mean
  of the reported tensor, averaged over that step's reports;
* ``lr/<network>/<group>``: the lr that step's updates used, read when the step began (lr
  schedulers step at the end of a step, so the value at its end belongs to the next one);
* ``time/steps_per_sec`` (since the previous log step), and the counters ``phase_updates/<phase>``
  and ``skipped/<phase>`` as of the end of that step;
* ``time/data_wait``: the share of the wall time since the previous log step spent inside
  ``next(stream)`` waiting for real batches (the stream's ``wait_seconds``; streams without it
  report nothing). Near 0: data keeps up; near 1: training waits on data (raise data.num_workers).

``text`` (``{tag: text}``, e.g. the config YAML) is handed over once at train start, as written (a
backend may format it: TensorBoard shows it as a Markdown code block);
``hparams`` (flat ``{name: str|int|float|bool}``) at train end with the metrics given to
:meth:`LogCallback.set_final_metrics`, as ``hparam/<name>``.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from alttrain.callbacks.loggers.base import Logger, flat_hparams
from alttrain.checks import check_int
from alttrain.engine.hooks import Callback, PhaseResult


class LogCallback(Callback):
    """Feeds ``loggers`` every ``log_every`` steps; the other callbacks log metrics and images through it."""

    def __init__(self, loggers: Sequence[Logger], log_every: int, text: Mapping[str, str] | None = None,
                 hparams: Mapping[str, Any] | None = None):
        self.loggers = list(loggers)
        self.log_every = check_int("trainer.log_every", log_every, 1)
        self.text = dict(text or {})
        self.hparams = flat_hparams(hparams) if hparams is not None else None
        self.final_metrics: dict[str, float] = {}
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._phase_seconds: dict[str, list[float]] = defaultdict(list)
        self._clock: tuple[float, int] | None = None  # (wall time, completed steps) at the last log step
        self._waited: float | None = None  # the stream's wait_seconds at the last log step
        self._lrs: dict[str, float] | None = None  # lr/* as the coming log step began

    # -- trainer hooks ----------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        if trainer.log_every and self.log_every % trainer.log_every:
            warnings.warn(f"the logger's log_every={self.log_every} is not a multiple of trainer.log_every="
                          f"{trainer.log_every}; grad_norm/* appears only on steps divisible by both", stacklevel=2)
        start = trainer.state.step
        for logger in self.loggers:
            logger.start(start)
        for tag, body in self.text.items():
            for logger in self.loggers:
                logger.log_text(tag, body, start)
        self._pending.clear()
        self._phase_seconds.clear()
        self._clock = (time.perf_counter(), start)
        self._waited = getattr(getattr(trainer, "stream", None), "wait_seconds", None)
        self._lrs = learning_rates(trainer) if start % self.log_every == 0 else None

    def on_phase_end(self, trainer, result: PhaseResult) -> None:
        if result.step % self.log_every or result.skipped:
            return
        pending = self._pending
        pending[f"loss/{result.phase.name}"].append(result.loss)
        for name, value in result.scalars.items():
            pending[name].append(value)
        if result.seconds is not None:  # the update's wall time (trainers time log steps only)
            self._phase_seconds[f"time/phase/{result.phase.name}"].append(result.seconds)

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step - 1  # the step that just ended
        if step % self.log_every == 0:
            self._log_step(trainer, step)
        if trainer.state.step % self.log_every == 0:
            # Schedulers have stepped: these are the lrs of the next step, which is a log step.
            self._lrs = learning_rates(trainer)

    def _log_step(self, trainer, step: int) -> None:
        lrs, self._lrs = self._lrs, None
        values = _to_floats(self._pending)
        self._pending.clear()
        values.update({name: sum(v) / len(v) for name, v in self._phase_seconds.items()})
        self._phase_seconds.clear()
        now, completed = time.perf_counter(), trainer.state.step  # after the sync: device work is done
        values.update(lrs if lrs is not None else learning_rates(trainer))
        waited = getattr(getattr(trainer, "stream", None), "wait_seconds", None)
        if self._clock is not None and now > self._clock[0]:
            values["time/steps_per_sec"] = (completed - self._clock[1]) / (now - self._clock[0])
            if waited is not None and self._waited is not None:  # wall-clock seconds: no device sync needed
                values["time/data_wait"] = (waited - self._waited) / (now - self._clock[0])
        self._clock, self._waited = (now, completed), waited
        values.update({f"phase_updates/{p}": n for p, n in trainer.state.phase_updates.items()})
        values.update({f"skipped/{p}": n for p, n in trainer.state.skipped.items()})
        self.log_scalars(values, step)

    def on_train_end(self, trainer) -> None:
        try:
            if self.hparams is not None:
                metrics = {f"hparam/{k}": v for k, v in self.final_metrics.items()}
                for logger in self.loggers:
                    logger.log_hparams(self.hparams, metrics, trainer.state.step)
        finally:
            self.close()

    def on_exception(self, trainer, exc: BaseException) -> None:
        for logger in self.loggers:
            logger.abort()

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()

    # -- for other callbacks ----------------------------------------------------------------------

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_scalars(values, step)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Evaluation results as ``metric/<name>`` scalars."""
        self.log_scalars({f"metric/{name}": float(value) for name, value in metrics.items()}, step)

    def set_final_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics to pair with the hyper-parameters at train end (must be set before it)."""
        self.final_metrics = {k: float(v) for k, v in metrics.items()}

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A CHW ``uint8`` image."""
        for logger in self.loggers:
            logger.log_image(tag, image, step)


def learning_rates(trainer) -> dict[str, float]:
    """``lr/<network>/<group>`` of every optimizer param group, as it is now."""
    return {f"lr/{net.name}/{group.get('name', i)}": float(group["lr"])
            for net in trainer.networks for i, group in enumerate(net.optimizer.param_groups)}


def _to_floats(pending: Mapping[str, list[torch.Tensor]]) -> dict[str, float]:
    """Per-name means (over reports, each report reduced to its mean), moved to the host in one transfer."""
    if not pending:
        return {}
    names = list(pending)
    means = [torch.stack([v.detach().float().mean() for v in pending[n]]).mean() for n in names]
    device = means[0].device
    host = torch.stack([m.to(device) for m in means]).tolist()
    return dict(zip(names, host))
