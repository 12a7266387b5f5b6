"""TensorBoard logging: losses, reported scalars, learning rates, counters, text, images, HParams.

Everything the trainer reports stays on the device until a *log step* (``step % log_every == 0``);
then all of that step's values are converted with a single host sync. Other steps cost an
integer test or two per hook call.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping

import torch

from alttrain.callbacks.base import Callback, PhaseResult
from alttrain.errors import ConfigError

HParamValue = str | int | float | bool


class TensorBoardLogger(Callback):
    """Writes one TensorBoard run into ``log_dir`` (a single directory, no per-run subfolders).

    Scalars, at ``global_step`` = the step an update belongs to (``PhaseResult.step``), on log steps:

    * ``loss/<phase>``: the mean over the phase's updates in that step (``repeat > 1``, e.g.
      ``n_critic``), so a 5-update D step is one point, comparable across ``repeat`` settings.
      Updates discarded as non-finite (``on_nan=skip``) are left out; ``skipped/<phase>`` counts them.
    * every reported scalar under its own name (``score/real``, ``grad_norm/D/body``, ...): the mean
      of the reported tensor (a loss term may report a whole batch), averaged over that step's reports;
    * ``lr/<network>/<group>``: the lr that step's updates used, read when the step began (lr
      schedulers step at the end of a step, so the value at its end belongs to the next one);
    * ``time/steps_per_sec`` (since the previous log step), and the counters ``phase_updates/<phase>``
      and ``skipped/<phase>`` as of the end of that step.

    ``text`` (``{tag: text}``, e.g. the config YAML) is written once at train start as a code
    block; ``hparams`` (flat ``{name: str|int|float|bool}``) is written at train end together with
    the metrics given to :meth:`set_final_metrics`, as ``hparam/<name>``.
    """

    def __init__(self, log_dir: str | Path, log_every: int, text: Mapping[str, str] | None = None,
                 hparams: Mapping[str, Any] | None = None):
        if isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1:
            raise ConfigError(f"logger.log_every must be an integer >= 1, got {log_every!r}")
        self.log_dir, self.log_every = Path(log_dir), log_every
        self.text = dict(text or {})
        self.hparams = _check_hparams(hparams) if hparams is not None else None
        self.final_metrics: dict[str, float] = {}
        self._writer = None
        self._purge_step: int | None = None
        self._pending: dict[str, list[torch.Tensor]] = defaultdict(list)
        self._clock: tuple[float, int] | None = None  # (wall time, completed steps) at the last log step
        self._lrs: dict[str, float] | None = None  # lr/* as the coming log step began

    # -- writer ------------------------------------------------------------------------------------

    @property
    def writer(self):
        """The ``SummaryWriter``, opened on first use."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: keep it off import time

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step)
        return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None

    # -- trainer hooks ----------------------------------------------------------------------------

    def on_train_start(self, trainer) -> None:
        if trainer.log_every and self.log_every % trainer.log_every:
            import warnings

            warnings.warn(f"logger.log_every={self.log_every} is not a multiple of trainer.log_every="
                          f"{trainer.log_every}; grad_norm/* appears only on steps divisible by both",
                          stacklevel=2)
        start = trainer.state.step
        # On resume from step S, the points a crashed run wrote past its checkpoint are dropped by
        # TensorBoard. S itself is kept: metrics and samples at S were written before that checkpoint.
        self._purge_step = start + 1 if start else None
        for tag, body in self.text.items():
            self.writer.add_text(tag, _code_block(body), global_step=start)
        self._pending.clear()
        self._clock = (time.perf_counter(), start)
        self._lrs = _learning_rates(trainer) if start % self.log_every == 0 else None

    def on_phase_end(self, trainer, result: PhaseResult) -> None:
        if result.step % self.log_every or result.skipped:
            return
        pending = self._pending
        pending[f"loss/{result.phase.name}"].append(result.loss)
        for name, value in result.scalars.items():
            pending[name].append(value)

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step - 1  # the step that just ended
        if step % self.log_every == 0:
            self._log_step(trainer, step)
        if trainer.state.step % self.log_every == 0:
            # Schedulers have stepped: these are the lrs of the next step, which is a log step.
            self._lrs = _learning_rates(trainer)

    def _log_step(self, trainer, step: int) -> None:
        lrs, self._lrs = self._lrs, None
        values = _to_floats(self._pending)
        self._pending.clear()
        now, completed = time.perf_counter(), trainer.state.step  # after the sync: device work is done
        writer = self.writer
        for name, value in values.items():
            writer.add_scalar(name, value, step)
        for name, lr in (lrs if lrs is not None else _learning_rates(trainer)).items():
            writer.add_scalar(name, lr, step)
        if self._clock is not None and now > self._clock[0]:
            writer.add_scalar("time/steps_per_sec", (completed - self._clock[1]) / (now - self._clock[0]), step)
        self._clock = (now, completed)
        for phase, count in trainer.state.phase_updates.items():
            writer.add_scalar(f"phase_updates/{phase}", count, step)
        for phase, count in trainer.state.skipped.items():
            writer.add_scalar(f"skipped/{phase}", count, step)

    def on_train_end(self, trainer) -> None:
        try:
            if self.hparams is not None:
                self._write_hparams(trainer.state.step)
        finally:
            self.close()

    def on_exception(self, trainer, exc: BaseException) -> None:
        self.close()

    # -- for other callbacks ----------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Write evaluation results as ``metric/<name>`` scalars."""
        for name, value in metrics.items():
            self.writer.add_scalar(f"metric/{name}", float(value), step)

    def set_final_metrics(self, metrics: Mapping[str, float]) -> None:
        """Metrics to pair with the hyper-parameters at train end (must be set before it)."""
        self.final_metrics = {k: float(v) for k, v in metrics.items()}

    def add_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """A CHW image: ``uint8``, or float in ``[0, 1]``."""
        self.writer.add_image(tag, image, step, dataformats="CHW")

    def _write_hparams(self, step: int) -> None:
        # SummaryWriter.add_hparams opens a second writer in a subfolder (a timestamp by default), which
        # TensorBoard shows as a separate run. Writing the same summaries here keeps one run, one folder.
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        metrics = {f"hparam/{k}": v for k, v in self.final_metrics.items()}
        for summary in hparams_summaries(dict(self.hparams), metrics):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)


def _learning_rates(trainer) -> dict[str, float]:
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


def _code_block(body: str) -> str:
    # A fence longer than any backtick run in the text, so YAML holding ``` cannot end it early.
    longest = max((len(m) for m in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{body}\n{fence}"


def _check_hparams(hparams: Mapping[str, Any]) -> dict[str, HParamValue]:
    out = {}
    for key, value in hparams.items():
        if value is None:
            value = "None"  # TensorBoard's HParams cannot store None
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"hyper-parameter '{key}' must be a str, int, float or bool for TensorBoard, "
                              f"got {type(value).__name__}; flatten it or convert it to a string")
        out[str(key)] = value
    return out
