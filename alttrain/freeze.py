"""Freezing, switched per phase: one network's active groups train, everything else stands still.

``FreezePlan`` is computed once per phase (the parameter lists are cached), and each
``with plan():`` opens its own frame that records every flag it touches and restores it on exit,
even when the body raises. Frames keep their own saved state, so nesting works (Lightning's
``toggle_optimizer`` keeps one slot and cannot nest).

Parameters the user froze (``requires_grad=False`` before the groups were built, or a
``frozen: true`` group) are never switched on: they are in no plan's ``enable`` list.

Idle networks may still run forward (G makes fakes in the D phase; D scores fakes in the G
phase). Forward passes in training mode update buffers (BatchNorm running statistics, spectral
norm's power-iteration vector), so the buffers of idle networks are snapshotted on entry and
copied back on exit: the idle network leaves the phase bit-identical.
"""

from __future__ import annotations

from typing import Sequence

import torch

from alttrain.network import Network


class FreezePlan:
    """What one phase trains: ``active`` network, restricted to ``groups`` (``None``: all non-frozen)."""

    def __init__(self, networks: Sequence[Network], active: Network, groups: Sequence[str] | None = None):
        self.active = active
        self.groups = None if groups is None else tuple(groups)
        self.enable = active.active_params(self.groups)
        enabled = {id(p) for p in self.enable}
        # Every parameter of every managed network that is not enabled is switched off, the active
        # network's inactive and frozen groups included.
        self.disable = [p for net in networks for p in net.all_params if id(p) not in enabled]
        self.idle_networks = [net for net in networks if net is not active]
        self.idle_buffers = [b for net in self.idle_networks for b in net.buffers]
        self._snapshots = [torch.empty_like(b) for b in self.idle_buffers]
        self._depth = 0  # buffer snapshots are taken by the outermost frame only

    def __call__(self) -> "_FreezeFrame":
        return _FreezeFrame(self)

    @property
    def idle_params(self) -> list[torch.nn.Parameter]:
        return self.disable


class _FreezeFrame:
    """One entry into a plan; owns the flags it changed, so frames nest in any order."""

    __slots__ = ("plan", "switched_on", "switched_off", "owns_buffers")

    def __init__(self, plan: FreezePlan):
        self.plan = plan

    def __enter__(self) -> FreezePlan:
        plan = self.plan
        # Only flags that differ are switched (and later switched back): restoring them is then
        # exactly restoring what was there, at half the cost of writing every flag twice.
        self.switched_on = [p for p in plan.enable if not p.requires_grad]
        self.switched_off = [p for p in plan.disable if p.requires_grad]
        for p in self.switched_on:
            p.requires_grad = True
        for p in self.switched_off:
            p.requires_grad = False
        self.owns_buffers = plan._depth == 0
        plan._depth += 1
        if self.owns_buffers and plan.idle_buffers:
            _copy_all(plan._snapshots, plan.idle_buffers)
        return plan

    def __exit__(self, *exc_info) -> None:
        plan = self.plan
        plan._depth -= 1
        if self.owns_buffers and plan.idle_buffers:
            _copy_all(plan.idle_buffers, plan._snapshots)
        for p in self.switched_on:
            p.requires_grad = False
        for p in self.switched_off:
            p.requires_grad = True


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    # One fused call instead of a copy_ per buffer; entering no_grad costs more than the copies of
    # a small model's buffers, and networks without buffers (MLPs) skip this function altogether.
    with torch.no_grad():
        torch._foreach_copy_(dst, src)
