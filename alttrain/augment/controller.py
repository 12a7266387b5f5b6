"""ADA's controller: moves the pipeline's ``p`` from the discriminator's overfitting signal.

Karras et al. 2020, Sec. 3: ``r_t = E[sign(D(x_real))]`` is 0 when D cannot tell the reals it
trains on from fakes and 1 when it is sure of all of them (overfitting). Every ``interval``
updates of the discriminator's phase, over the reals seen since the last adjustment,

    p <- clamp(p + sign(r_t - target) * (reals seen) / speed_samples, 0, 1),

so ``p`` can go from 0 to 1 in ``speed_samples`` reals (StyleGAN2-ADA: target 0.6, interval 4,
500k images; see conf/augment/ada.yaml for the default here). ``r_t`` is read from the phase's
``score/real`` (D's logits on its real batch; the last micro-batch's when it accumulates).

Everything stays on the device: the sign sums are tensors, the counts are the logits' shapes,
and ``p`` moves in place, so a step costs no host sync; the logger's steps read ``augment/p`` and
``augment/rt`` (the mean sign since the previous log step) with one. Under DDP every rank runs a
controller and the sign sums are all-reduced at each update, so ``p`` and this state are the
same everywhere and rank 0's checkpoint resumes every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from alttrain.augment.ada import AdaptiveAugment
from alttrain.checks import check_int, check_range
from alttrain.engine.hooks import Callback, PhaseResult
from alttrain.errors import ConfigError


def _target(key: str, value: Any) -> None:
    if value is not None:
        check_range(key, value, 0.0, 1.0, high_open=True)


def _name(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be the name of a phase of trainer.phases, got {value!r}")


# augment.ada.<name>: the allowed values (the config layer checks them; phase also against trainer.phases).
FIELDS = {"target": _target, "interval": lambda k, v: check_int(k, v, 1),
          "speed_samples": lambda k, v: check_int(k, v, 1), "p": lambda k, v: check_range(k, v, 0.0, 1.0),
          "phase": _name}


class ADAController(Callback):
    """Steers ``pipeline.p`` from the ``score/real`` of phase ``phase``; ``target=None`` keeps ``p`` fixed.

    ``logger`` (a :class:`~alttrain.callbacks.loggers.LogCallback`, or ``None`` on ranks that do not
    log) receives ``augment/p`` and ``augment/rt`` on its log steps.
    """

    def __init__(self, pipeline: AdaptiveAugment, phase: str = "D", target: float | None = 0.6, interval: int = 4,
                 speed_samples: int = 20_000, logger: Any = None):
        self.pipeline, self.phase, self.logger = pipeline, phase, logger
        self.target = None if target is None else float(target)
        self.interval, self.speed_samples = int(interval), int(speed_samples)
        zero = torch.zeros((), device=pipeline.device)
        self.updates = 0                          # the phase's updates seen
        self._sum, self._count, self._samples = zero.clone(), 0, 0      # since the last adjustment
        self._log_sum, self._log_count = zero.clone(), 0                # since the last log step

    def on_phase_end(self, trainer, result: PhaseResult) -> None:
        if result.phase.name != self.phase or result.skipped:
            return
        logits = result.scalars.get("score/real")
        if logits is None:
            raise ConfigError(f"augment.ada.phase is '{self.phase}', whose loss reports no score/real (D's logits "
                              "on the reals); name the discriminator's phase, e.g. augment.ada.phase=D")
        signs = logits.detach().sign().sum().to(self._sum.dtype)
        if trainer.world_size > 1:
            dist.all_reduce(signs)  # the same r_t, hence the same p, on every rank
        n = logits.numel() * trainer.world_size
        self._sum += signs
        self._count += n
        self._samples += n * result.phase.accumulate
        if self.logger is not None:
            self._log_sum += signs
            self._log_count += n
        self.updates += 1
        if self.target is not None and self.updates % self.interval == 0:
            self.adjust()

    def adjust(self) -> None:
        """Move p by one step towards keeping r_t at the target; start the next interval."""
        if self._count:
            rt = self._sum / self._count
            step = self._samples / self.speed_samples
            self.pipeline.p.add_(torch.sign(rt - self.target) * step).clamp_(0.0, 1.0)
        self._sum.zero_()
        self._count = self._samples = 0

    def on_step_end(self, trainer) -> None:
        if self.logger is None:
            return
        step = trainer.state.step - 1  # the step that just ended
        if step % self.logger.log_every:
            return
        p, total = torch.stack([self.pipeline.p.float(), self._log_sum.float()]).tolist()  # one host sync
        values = {"augment/p": p}
        if self._log_count:
            values["augment/rt"] = total / self._log_count
        self.logger.log_scalars(values, step)
        self._log_sum.zero_()
        self._log_count = 0

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "sum": self._sum.clone(), "count": self._count, "samples": self._samples,
                "log_sum": self._log_sum.clone(), "log_count": self._log_count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self._sum.copy_(state["sum"])
        self._log_sum.copy_(state["log_sum"])
        self._count, self._samples = int(state["count"]), int(state["samples"])
        self._log_count = int(state["log_count"])
