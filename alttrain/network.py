"""A network as the trainer sees it: a module, its named parameter groups, its own optimizer and lr schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from alttrain.errors import ConfigError
from alttrain.params import GroupSpec, ResolvedGroup, apply_frozen, resolve_groups, summary_table, torch_param_groups

OptimizerFactory = Callable[..., torch.optim.Optimizer]


@dataclass(eq=False)
class Network:
    """One player of an alternating game.

    Everything the freeze context needs is cached here once, so that switching phases never walks
    ``named_parameters()`` again. ``scheduler`` (optional) is a ``torch.optim.lr_scheduler.LRScheduler``
    of ``optimizer``; the trainer steps it once per trainer step.
    """

    name: str
    module: nn.Module
    groups: list[ResolvedGroup]
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None = None
    group_by_name: dict[str, ResolvedGroup] = field(init=False)
    all_params: list[nn.Parameter] = field(init=False)
    buffers: list[torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        self.group_by_name = {g.name: g for g in self.groups}
        self.all_params = list(self.module.parameters())
        self.buffers = [b for b in self.module.buffers()]

    @property
    def trainable_groups(self) -> list[ResolvedGroup]:
        return [g for g in self.groups if not g.frozen]

    def active_params(self, group_names: Sequence[str] | None) -> list[nn.Parameter]:
        """Parameters of the named groups (all non-frozen groups when ``None``)."""
        if group_names is None:
            return [p for g in self.trainable_groups for p in g.params]
        params = []
        for name in group_names:
            group = self.group_by_name.get(name)
            if group is None:
                raise ConfigError(f"network '{self.name}' has no param group '{name}'; "
                                  f"its groups are: {', '.join(self.group_by_name)}")
            if group.frozen:
                raise ConfigError(f"param group '{name}' of '{self.name}' is frozen: true and cannot be "
                                  "made active in a phase; remove it from the phase's groups")
            params.extend(group.params)
        return params

    def summary(self) -> str:
        title = f"{self.name} param groups"
        if self.scheduler is not None:  # the lr column shows step 0's value
            title += f" (lr scheduled by {type(self.scheduler).__name__})"
        return summary_table(self.groups, self.optimizer, title=title)


def build_network(name: str, module: nn.Module, group_specs: Sequence[GroupSpec | Mapping[str, Any]],
                  optimizer: OptimizerFactory) -> Network:
    """Resolve the groups of ``module``, switch frozen groups off and build its optimizer.

    ``optimizer`` is called with the torch param-group list, e.g. ``functools.partial(torch.optim.Adam, lr=2e-4)``.
    """
    groups = resolve_groups(module, group_specs, owner=name)
    apply_frozen(groups)
    torch_groups = torch_param_groups(groups)
    if not torch_groups:
        raise ConfigError(f"every param group of '{name}' is frozen: true, so its optimizer would have "
                          "nothing to train; unfreeze at least one group")
    try:
        opt = optimizer(torch_groups)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build the optimizer of '{name}': {exc}; check optim.{name} options") from None
    # torch.optim silently keeps unknown keys in a param group, so a typo such as 'lrr' would be ignored.
    for group in groups:
        unknown = sorted(set(group.options) - set(opt.defaults))
        if unknown:
            raise ConfigError(f"param group '{group.name}' of '{name}' has option '{unknown[0]}', which "
                              f"{type(opt).__name__} does not take; its options are: {', '.join(sorted(opt.defaults))}")
    return Network(name=name, module=module, groups=groups, optimizer=opt)
