"""Callbacks: everything with side effects (files, TensorBoard, console) hangs off the trainer here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch

if TYPE_CHECKING:  # pragma: no cover
    from alttrain.phases import Phase
    from alttrain.trainer import Trainer


@dataclass
class PhaseResult:
    """What one optimizer update of a phase reports. Tensors are detached and not yet synced."""

    phase: "Phase"
    step: int                               # trainer step the update belongs to
    loss: torch.Tensor                      # the phase's loss (before its weight)
    scalars: dict[str, torch.Tensor]        # e.g. score/real, penalty/r1, grad_norm/<net>/<group>; logged as means
    skipped: bool = False                   # a non-finite update discarded under on_nan=skip


class Callback:
    """Hooks called by :class:`~alttrain.trainer.Trainer`; override what you need.

    ``state_dict``/``load_state_dict`` let a callback's state travel in checkpoints.
    """

    def on_train_start(self, trainer: "Trainer") -> None: ...

    def on_phase_end(self, trainer: "Trainer", result: PhaseResult) -> None: ...

    def on_step_end(self, trainer: "Trainer") -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None: ...

    def on_exception(self, trainer: "Trainer", exc: BaseException) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CallbackList:
    """Fans each hook out to every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.callbacks = list(callbacks)
        # Bound methods cached once: the per-phase fan-out is on the hot path.
        self._phase_end = [c.on_phase_end for c in self.callbacks if _overrides(c, "on_phase_end")]
        self._step_end = [c.on_step_end for c in self.callbacks if _overrides(c, "on_step_end")]

    def on_train_start(self, trainer):
        for c in self.callbacks:
            c.on_train_start(trainer)

    def on_phase_end(self, trainer, result):
        for hook in self._phase_end:
            hook(trainer, result)

    def on_step_end(self, trainer):
        for hook in self._step_end:
            hook(trainer)

    def on_train_end(self, trainer):
        for c in self.callbacks:
            c.on_train_end(trainer)

    def on_exception(self, trainer, exc):
        for c in self.callbacks:
            c.on_exception(trainer, exc)


def _overrides(callback: Callback, method: str) -> bool:
    return getattr(type(callback), method) is not getattr(Callback, method)
