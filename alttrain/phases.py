"""Phases are data: which network a step of the schedule trains, with what loss, how often.

One trainer *step* is one pass over the schedule. A phase runs at step ``s`` when
``s % every == 0`` and then performs ``repeat`` optimizer updates, each from ``accumulate``
micro-batches. ``n_critic=5`` is ``D.repeat=5``; lazy R1 every 16 steps is a phase with ``every=16``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from alttrain.errors import ConfigError
from alttrain.network import Network
from alttrain.objectives import LossTerm


@dataclass(frozen=True, eq=False)
class Phase:
    name: str                       # label for logs and counters: loss/<name>, phase_steps/<name>
    network: Network                # the only network this phase updates
    loss: LossTerm                  # callable(gan, real) -> (loss, scalars)
    groups: tuple[str, ...] | None = None  # active param groups; None = every non-frozen group
    repeat: int = 1                 # optimizer updates each time the phase runs
    every: int = 1                  # run at steps 0, every, 2*every, ...
    accumulate: int = 1             # micro-batches whose gradients are summed into one update
    weight: float = 1.0             # loss multiplier; lazy regularisation uses weight = every

    def __post_init__(self) -> None:
        for key in ("repeat", "every", "accumulate"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"trainer.phases.{self.name}.{key} must be an integer >= 1, got {value!r}")

    def is_due(self, step: int) -> bool:
        return step % self.every == 0

    def updates_in(self, steps: int) -> int:
        """Optimizer updates this phase makes over steps 0..steps-1 (hand-checkable)."""
        return -(-steps // self.every) * self.repeat


def validate_schedule(phases: Sequence[Phase], networks: Sequence[Network]) -> None:
    """Every network must be trained by some phase, and names must be unique."""
    if not phases:
        raise ConfigError("trainer.phases is empty; declare at least a D and a G phase")
    names = [p.name for p in phases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"trainer.phases has duplicate names: {', '.join(sorted(dupes))}")
    trained = {id(p.network) for p in phases}
    for net in networks:
        if id(net) not in trained:
            raise ConfigError(f"no phase trains '{net.name}'; add a phase with network: {net.name}")
