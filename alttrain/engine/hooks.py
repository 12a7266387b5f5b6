"""The callback protocol: everything with side effects (files, loggers, console) hangs off the loop here.

Defined beside the loop, which calls it; callbacks import this module, never the reverse. A
callback with state returns it from ``state_dict``: it travels in checkpoints under its
``state_key`` and comes back through ``load_state_dict`` on resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # pragma: no cover
    from alttrain.engine.phase import Phase
    from alttrain.engine.trainer import Trainer


@dataclass
class PhaseResult:
    """What one optimizer update of a phase reports. Tensors are detached and not yet synced."""

    phase: Phase
    step: int                               # trainer step the update belongs to
    loss: torch.Tensor                      # the phase's loss (before its weight)
    scalars: dict[str, torch.Tensor]        # e.g. score/real, penalty/r1, grad_norm/<net>/<group>; logged as means
    skipped: bool = False                   # a non-finite update discarded under on_nan=skip
    seconds: float | None = None            # the update's wall time, measured on log steps only


class Callback:
    """Hooks called by :class:`~alttrain.engine.trainer.Trainer`; override what you need."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_phase_end(self, trainer: Trainer, result: PhaseResult) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None: ...

    @property
    def state_key(self) -> str:
        """Where this callback's state lives in a checkpoint (``callbacks.<state_key>``)."""
        return type(self).__name__

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

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """``{state_key: state}`` of every callback that has state."""
        states = {}
        for c in self.callbacks:
            state = c.state_dict()
            if state:
                states[c.state_key] = state
        return states

    def load_state_dict(self, states: dict[str, dict[str, Any]]) -> None:
        """Give each callback its saved state; a callback the checkpoint has no state for starts fresh."""
        for c in self.callbacks:
            if c.state_key in states:
                c.load_state_dict(states[c.state_key])


def _overrides(callback: Callback, method: str) -> bool:
    return getattr(type(callback), method) is not getattr(Callback, method)
