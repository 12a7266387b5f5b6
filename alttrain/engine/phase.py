"""Phases are data: which networks a step of the schedule trains, with what loss, how often.

One trainer *step* is one pass over the schedule. A phase runs at step ``s`` when
``s % every == 0`` and then performs ``repeat`` optimizer updates, each from ``accumulate``
micro-batches. ``n_critic=5`` is ``D.repeat=5``; lazy R1 every 16 steps is a phase with ``every=16``.
A phase may train several networks at once (CycleGAN's two generators): each steps its own optimizer
on the same loss, and every network the phase does not name is idle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from alttrain.checks import check_int, is_number
from alttrain.engine.game import LossTerm
from alttrain.engine.network import Network, check_disjoint
from alttrain.errors import ConfigError

Groups = Mapping[str, "tuple[str, ...] | None"]


@dataclass(frozen=True, eq=False)
class Phase:
    """One entry of the schedule.

    ``networks``: the network this phase updates, or several. ``groups``: the active param groups;
    ``None`` means every non-frozen group of every trained network, a list names groups of the one
    trained network, a mapping ``{network: [groups] | None}`` names them per network.
    """

    name: str                       # label for logs and counters: loss/<name>, phase_updates/<name>
    networks: Network | Sequence[Network]   # stored as a tuple of the networks this phase updates
    loss: LossTerm                  # callable(game, batch) -> (loss, scalars)
    groups: Sequence[str] | Mapping[str, Sequence[str] | None] | None = None  # stored as {network: tuple | None}
    repeat: int = 1                 # optimizer updates each time the phase runs
    every: int = 1                  # run at steps 0, every, 2*every, ...
    accumulate: int = 1             # micro-batches whose gradients are summed into one update
    weight: float = 1.0             # loss multiplier; lazy regularisation uses weight = every

    def __post_init__(self) -> None:
        where = f"trainer.phases.{self.name}"
        networks = (self.networks,) if isinstance(self.networks, Network) else tuple(self.networks)
        if not networks or not all(isinstance(n, Network) for n in networks):
            raise ConfigError(f"{where} must train at least one Network (alttrain.build_network makes one)")
        object.__setattr__(self, "networks", networks)
        object.__setattr__(self, "groups", _normalise_groups(where, networks, self.groups))
        for key in ("repeat", "every", "accumulate"):
            check_int(f"{where}.{key}", getattr(self, key), 1)
        # 0 would train nothing and a negative weight would train the opposite objective; both are typos.
        if not is_number(self.weight) or not self.weight > 0:
            raise ConfigError(f"{where}.weight must be a finite number > 0, got {self.weight!r}")
        object.__setattr__(self, "weight", float(self.weight))

    @property
    def network_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.networks)

    def is_due(self, step: int) -> bool:
        return step % self.every == 0

    def updates_in(self, steps: int) -> int:
        """Optimizer updates this phase makes over steps 0..steps-1 (hand-checkable)."""
        return -(-steps // self.every) * self.repeat


def _normalise_groups(where: str, networks: tuple[Network, ...], groups: Any) -> dict[str, tuple[str, ...] | None]:
    names = [n.name for n in networks]
    if groups is None:
        return {n: None for n in names}
    if isinstance(groups, Mapping):
        unknown = [k for k in groups if k not in names]
        if unknown:
            raise ConfigError(f"{where}.groups names network '{unknown[0]}', which this phase does not train "
                              f"(it trains {', '.join(names)})")
        return {n: None if groups.get(n) is None else tuple(groups[n]) for n in names}
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise ConfigError(f"{where}.groups must be a list of param group names, a mapping {{network: [groups]}} "
                          f"or null, got {groups!r}")
    if len(networks) > 1:
        raise ConfigError(f"{where} trains {', '.join(names)}: give its groups per network, "
                          f"e.g. groups: {{{names[0]}: [...], {names[1]}: null}}")
    return {names[0]: tuple(groups)}


def validate_schedule(phases: Sequence[Phase], networks: Sequence[Network]) -> None:
    """Names are unique, phases train only the trainer's networks, and every network is trained by some phase."""
    if not phases:
        raise ConfigError("trainer.phases is empty; declare at least one phase, e.g. a D and a G phase")
    check_disjoint(networks)
    names = [p.name for p in phases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"trainer.phases has duplicate names: {', '.join(sorted(dupes))}")
    known = {id(n) for n in networks}
    for phase in phases:
        for net in phase.networks:
            if id(net) not in known:
                raise ConfigError(f"phase '{phase.name}' trains '{net.name}', which is not one of the trainer's "
                                  f"networks ({', '.join(n.name for n in networks)}); pass it to the Trainer too")
        if len(set(map(id, phase.networks))) != len(phase.networks):
            raise ConfigError(f"phase '{phase.name}' names a network twice")
    trained = {id(n) for p in phases for n in p.networks}
    for net in networks:
        if id(net) not in trained:
            raise ConfigError(f"no phase trains '{net.name}'; add a phase with network: {net.name}")
