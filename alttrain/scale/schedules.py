"""Learning-rate schedules: a piecewise-linear one that YAML can declare, and the check every schedule passes.

alttrain steps each network's scheduler once per trainer step (see :mod:`alttrain.engine.trainer`), so a
schedule's step counts are trainer steps. Any ``torch.optim.lr_scheduler.LRScheduler`` works except
``ReduceLROnPlateau``, which waits for a metric that alttrain does not produce at every step.
"""

from __future__ import annotations

import bisect
import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from alttrain.checks import is_number
from alttrain.errors import ConfigError

USE_INSTEAD = "torch.optim.lr_scheduler.CosineAnnealingLR or alttrain.schedules.PiecewiseLinearLR"


class PiecewiseLinearLR(LRScheduler):
    """``lr = base_lr * factor(step)``, with ``factor`` interpolated linearly between ``points``.

    ``points`` is a list of ``[step, factor]`` pairs with strictly increasing steps >= 0 and factors
    >= 0. Before the first point the first factor holds, after the last point the last one.
    ``[[2500, 1.0], [5000, 0.1]]`` keeps the configured lr for 2500 steps, then decays it linearly
    to a tenth at step 5000; ``[[0, 0.0], [500, 1.0]]`` is a linear warm-up from zero.

    Every value is computed from ``base_lr`` and the step alone (never from the previous lr), so
    a resumed schedule matches an uninterrupted one bit for bit.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, points: Sequence[Sequence[float]], last_epoch: int = -1):
        # Plain lists of numbers (not the config's ListConfig): state_dict() must load with weights_only=True.
        self.points = check_points(points)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: float) -> float:
        """The multiplier of the base lr at ``step``."""
        steps = [s for s, _ in self.points]
        if step <= steps[0]:
            return self.points[0][1]
        if step >= steps[-1]:
            return self.points[-1][1]
        i = bisect.bisect_right(steps, step)  # steps[i - 1] <= step < steps[i]
        (s0, f0), (s1, f1) = self.points[i - 1], self.points[i]
        return f0 + (f1 - f0) * (step - s0) / (s1 - s0)

    def get_lr(self) -> list[float]:
        factor = self.factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    _get_closed_form_lr = get_lr  # already closed form: step(epoch) gives the same values


def check_points(points: Any) -> list[list[float]]:
    """``points`` as a plain list of ``[step, factor]`` lists; :class:`ConfigError` naming the first problem."""
    example = "e.g. [[0, 1.0], [1000, 0.1]]"
    if isinstance(points, (str, bytes)) or not isinstance(points, Sequence) or not points:
        raise ConfigError(f"PiecewiseLinearLR points must be a non-empty list of [step, factor] pairs, {example}; "
                          f"got {points!r}")
    out: list[list[float]] = []
    for i, pair in enumerate(points):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ConfigError(f"PiecewiseLinearLR points[{i}] must be a [step, factor] pair, got {pair!r}; "
                              f"write points as {example}")
        step, factor = pair
        if not is_number(step) or step < 0:
            raise ConfigError(f"PiecewiseLinearLR points[{i}] has step {step!r}; steps must be numbers >= 0")
        if not is_number(factor) or factor < 0:
            raise ConfigError(f"PiecewiseLinearLR points[{i}] has factor {factor!r}; factors must be numbers >= 0 "
                              "(the lr is the optimizer's lr times the factor)")
        if out and step <= out[-1][0]:
            raise ConfigError(f"PiecewiseLinearLR points[{i}] has step {step} after step {out[-1][0]}; steps must "
                              "strictly increase: sort the points and drop duplicate steps")
        out.append([int(step) if isinstance(step, numbers.Integral) else float(step), float(factor)])
    return out


def check_scheduler(scheduler: Any, owner: str) -> None:
    """Raise :class:`ConfigError` unless ``scheduler`` (an instance or a class) can be stepped once per step.

    ``owner`` names it in the message, e.g. ``optim.generator.scheduler``.
    """
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    if issubclass(cls, ReduceLROnPlateau):
        raise ConfigError(f"{owner} is ReduceLROnPlateau, which needs a metric at every step and alttrain has none; "
                          f"use a schedule over steps such as {USE_INSTEAD}")
    if not issubclass(cls, LRScheduler):
        raise ConfigError(f"{owner} must be a torch.optim.lr_scheduler.LRScheduler, got {cls.__module__}."
                          f"{cls.__qualname__}; use e.g. {USE_INSTEAD}")


def step_schedulers(schedulers: Sequence[LRScheduler]) -> None:
    """One step of each schedule: a trainer step, whether or not its optimizer made an update in it."""
    with warnings.catch_warnings():
        # A schedule counts trainer steps, so it advances even when its optimizer made no update in
        # this step (a GradScaler or on_nan=skip discarded it, or no phase of the network was due).
        # torch warns about exactly that on a scheduler's first step.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                category=UserWarning)
        for scheduler in schedulers:
            scheduler.step()
