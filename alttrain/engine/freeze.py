"""Freezing, switched per phase: the phase's networks' active groups train, everything else stands still.

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

from collections.abc import Mapping, Sequence

import torch

from alttrain.engine.network import Network


class FreezePlan:
    """What one phase trains: the ``active`` networks, each restricted to its ``groups``.

    ``active`` is one network or several; ``groups`` is a list of group names (one active network)
    or ``{network name: [groups] | None}``; ``None`` means every non-frozen group.
    """

    def __init__(self, networks: Sequence[Network], active: Network | Sequence[Network],
                 groups: Sequence[str] | Mapping[str, Sequence[str] | None] | None = None):
        self.active = (active,) if isinstance(active, Network) else tuple(active)
        if groups is None or isinstance(groups, Mapping):
            per_net = {n.name: None if not groups or groups.get(n.name) is None else tuple(groups[n.name])
                       for n in self.active}
        else:
            per_net = {self.active[0].name: tuple(groups)}
        self.groups = per_net
        self.enable = [p for net in self.active for p in net.active_params(per_net[net.name])]
        enabled = {id(p) for p in self.enable}
        # Every parameter of every managed network that is not enabled is switched off, the active
        # networks' inactive and frozen groups included.
        self.disable = [p for net in networks for p in net.all_params if id(p) not in enabled]
        active_ids = {id(n) for n in self.active}
        self.idle_networks = [net for net in networks if id(net) not in active_ids]
        self.idle_buffers = [b for net in self.idle_networks for b in net.buffers]
        self._snapshots = [torch.empty_like(b) for b in self.idle_buffers]
        # Restored through `.data`, which shares the buffers' storage but not their autograd version
        # counters: a graph built before the phase (the step's shared fakes, alttrain.engine.reuse) may have
        # saved an idle network's BatchNorm statistics, and putting back the very values it saved must not
        # make that graph unusable. Every graph made inside the phase is backpropagated before the restore.
        self._restore_into = [b.data for b in self.idle_buffers]
        self._depth = 0  # buffer snapshots are taken by the outermost frame only

    def __call__(self) -> _FreezeFrame:
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
            _copy_all(plan._restore_into, plan._snapshots)
        for p in self.switched_on:
            p.requires_grad = False
        for p in self.switched_off:
            p.requires_grad = True


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    # One fused call instead of a copy_ per buffer; entering no_grad costs more than the copies of
    # a small model's buffers, and networks without buffers (MLPs) skip this function altogether.
    with torch.no_grad():
        torch._foreach_copy_(dst, src)
