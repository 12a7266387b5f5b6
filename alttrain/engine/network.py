"""A network as the trainer sees it: a module, its named parameter groups, its own optimizer and lr schedule."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from alttrain.engine.params import (
    GroupSpec,
    ResolvedGroup,
    apply_frozen,
    resolve_groups,
    summary_table,
    torch_param_groups,
)
from alttrain.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]

# Optimizers whose multi-tensor (foreach) step computes, on a CPU, exactly the numbers of their
# per-tensor loop, bit for bit (tests/test_params.py proves it for each, with its usual options).
# NAdam, RAdam and ASGD are left out: their foreach code rounds differently (1e-7 after 30 steps).
_SAME_FOREACH = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad,
                 torch.optim.Adamax, torch.optim.Adadelta, torch.optim.Rprop)


@dataclass(eq=False)
class Network:
    """One player of an alternating game.

    Everything the freeze context needs is cached here once, so that switching phases never walks
    ``named_parameters()`` again. ``scheduler`` (optional) is a ``torch.optim.lr_scheduler.LRScheduler``
    of ``optimizer``; the trainer steps it once per trainer step. ``conditional``: the module's
    ``forward`` takes class labels (a parameter named ``labels``), which loss terms then pass.
    """

    name: str
    module: nn.Module
    groups: list[ResolvedGroup]
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler | None = None
    group_by_name: dict[str, ResolvedGroup] = field(init=False)
    all_params: list[nn.Parameter] = field(init=False)
    buffers: list[torch.Tensor] = field(init=False)
    conditional: bool = field(init=False)

    def __post_init__(self) -> None:
        self.group_by_name = {g.name: g for g in self.groups}
        self.all_params = list(self.module.parameters())
        self.buffers = [b for b in self.module.buffers()]
        self.conditional = takes_labels(self.module)

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
    use_foreach_on_cpu(opt)
    # torch.optim silently keeps unknown keys in a param group, so a typo such as 'lrr' would be ignored.
    for group in groups:
        unknown = sorted(set(group.options) - set(opt.defaults))
        if unknown:
            raise ConfigError(f"param group '{group.name}' of '{name}' has option '{unknown[0]}', which "
                              f"{type(opt).__name__} does not take; its options are: {', '.join(sorted(opt.defaults))}")
    return Network(name=name, module=module, groups=groups, optimizer=opt)


def use_foreach_on_cpu(opt: torch.optim.Optimizer) -> None:
    """Give CPU param groups the multi-tensor step (``foreach=True``) where the config left it to torch.

    torch's default is its multi-tensor step on an accelerator but its per-tensor loop on a CPU,
    which dispatches every elementwise op once per tensor: with the small tensors of a GAN that
    dispatch is a large share of an Adam step (DCGAN's two optimizers: 1.10 ms against 0.84 ms, the MLP
    GAN's: 0.49 ms against 0.41 ms). Only optimizers whose two steps agree bit for bit get it, so
    nothing a run computes changes. A group that says ``foreach`` or ``fused`` itself, or is
    ``differentiable``, keeps what it says.
    """
    if type(opt) not in _SAME_FOREACH:
        return
    for group in opt.param_groups:
        if group.get("foreach") is None and not group.get("fused") and not group.get("differentiable") \
                and all(p.device.type == "cpu" for p in group["params"]):
            group["foreach"] = True


def takes_labels(module: nn.Module) -> bool:
    """Whether ``module.forward`` has a parameter named ``labels`` (a conditional model)."""
    try:
        return "labels" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature (a C extension)
        return False


def check_disjoint(networks: Sequence[Network]) -> None:
    """A module or parameter belongs to one network only: two optimizers stepping it would fight."""
    names = [n.name for n in networks]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"two networks are named '{dupes[0]}'; network names must be unique")
    owner: dict[int, tuple[str, str]] = {}
    for net in networks:
        for pname, p in net.module.named_parameters(remove_duplicate=False):
            other = owner.get(id(p))
            if other is not None and other[0] != net.name:
                raise ConfigError(f"parameter '{pname}' of network '{net.name}' is also parameter '{other[1]}' of "
                                  f"network '{other[0]}': a parameter may belong to one network only; give each "
                                  "network its own module (copy.deepcopy to start from the same weights)")
            owner.setdefault(id(p), (net.name, pname))


def device_of(networks: Sequence[Network]) -> torch.device:
    """Where the networks' parameters are (the CPU for networks without any)."""
    for net in networks:
        for tensor in net.all_params:
            return tensor.device
    return torch.device("cpu")
