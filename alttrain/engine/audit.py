"""Proof that what was idle during a phase did not move.

``IdleAudit(plan, networks)`` snapshots, before a phase, every parameter, buffer and optimizer-state
tensor that the phase must leave alone; ``verify()`` afterwards demands bit-identity (``torch.equal``)
and that idle parameters carry no ``.grad``. It catches the classic bug of "freezing" by zeroing
gradients: under Adam with momentum or weight decay the weights still move.

It clones everything idle, so it is a debugging and testing tool (``trainer.audit=true``), not
something to leave on for long runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from alttrain.engine.freeze import FreezePlan
from alttrain.engine.network import Network
from alttrain.errors import FreezeViolation


def _idle_tensors(plan: FreezePlan, networks: Sequence[Network]) -> Iterator[tuple[str, torch.Tensor]]:
    """(qualified name, tensor) for everything the phase must not change."""
    enabled = {id(p) for p in plan.enable}
    active = {id(n) for n in plan.active}
    for net in networks:
        idle_net = id(net) not in active
        for name, p in net.module.named_parameters():
            if id(p) not in enabled:
                yield f"{net.name}.{name}", p
        if idle_net:
            for name, b in net.module.named_buffers():
                yield f"{net.name}.{name} (buffer)", b
        names = {id(p): n for n, p in net.module.named_parameters()}
        for p, state in net.optimizer.state.items():
            if idle_net or id(p) not in enabled:
                for key, value in state.items():
                    if torch.is_tensor(value):
                        yield f"{net.name}.{names.get(id(p), '?')} (optimizer state '{key}')", value


class IdleAudit:
    """Snapshot of the idle state before one phase; ``verify`` raises :class:`FreezeViolation`."""

    def __init__(self, plan: FreezePlan, networks: Sequence[Network], phase: str = ""):
        self.plan, self.networks, self.phase = plan, networks, phase
        self.before = {name: t.detach().clone() for name, t in _idle_tensors(plan, networks)}

    def verify(self) -> None:
        where = f" in phase '{self.phase}'" if self.phase else ""
        for p in self.plan.idle_params:
            if p.grad is not None:
                raise FreezeViolation(f"idle parameter {self._name(p)} has a .grad after the phase{where}")
        after = dict(_idle_tensors(self.plan, self.networks))
        for name, old in self.before.items():
            new = after.get(name)
            if new is None or new.shape != old.shape or not torch.equal(new, old):
                raise FreezeViolation(f"idle tensor {name} changed{where}")
        # Optimizer state created during the phase for an idle parameter is a violation too.
        for name in after.keys() - self.before.keys():
            raise FreezeViolation(f"idle tensor {name} appeared{where} (an idle parameter was stepped)")

    def _name(self, param: torch.Tensor) -> str:
        for net in self.networks:
            for name, p in net.module.named_parameters():
                if p is param:
                    return f"{net.name}.{name}"
        return "<unnamed>"
