"""Per phase, the modules its loss sees: compiled forwards, DDP wrappers of the trained networks, float32 outputs.

Without compile, DDP or mixed precision every phase sees the plain modules. Otherwise, per phase:

* ``compile``: each network's forward compiled once and shared by every phase, except in a phase
  whose loss differentiates through an input gradient (R1, WGAN-GP), which AOTAutograd cannot
  differentiate again: it calls the eager modules;
* DDP: each network the phase trains is wrapped while exactly its enabled parameters require grad
  (DDP registers those at wrap time), one wrapper per network and parameter set, reused by phases
  that train the same set; idle networks are called unwrapped (they reduce no gradient);
* mixed precision: every network's output is cast to float32, so losses, distances and penalties
  are computed in full precision whichever network a loss reads;
* input transforms (``transforms[name]``, e.g. differentiable augmentation of everything a
  discriminator sees): applied to the network's first input in every phase, outside the other
  wrappers, so gradients flow through the transform into whatever made the input.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alttrain.engine.batch import LatentPrior
from alttrain.engine.freeze import FreezePlan
from alttrain.engine.game import Game
from alttrain.engine.network import Network
from alttrain.engine.phase import Phase
from alttrain.errors import ConfigError
from alttrain.scale.compile import Backend, compile_module, needs_double_backward
from alttrain.scale.distributed import Replicas
from alttrain.scale.precision import Precision

_NO_CONTEXT = contextlib.nullcontext()  # reusable: one object instead of one per micro-batch


@dataclass
class Views:
    """``games[phase]``: what its loss sees; ``ddp[phase]``: its trained networks' wrappers; ``tied``:
    phases that add a zero tie so DDP sees a gradient for every registered parameter."""

    games: dict[str, Game]
    ddp: dict[str, list[nn.Module]] = field(default_factory=dict)
    tied: set[str] = field(default_factory=set)

    def sync_context(self, phase: str, last: bool):
        """Under DDP, all-reduce gradients only on the last micro-batch of an update."""
        wrappers = self.ddp.get(phase)
        if last or not wrappers:
            return _NO_CONTEXT
        if len(wrappers) == 1:
            return wrappers[0].no_sync()
        stack = contextlib.ExitStack()
        for wrapper in wrappers:
            stack.enter_context(wrapper.no_sync())
        return stack


def build_views(networks: Sequence[Network], phases: Sequence[Phase], plans: dict[str, FreezePlan],
                prior: LatentPrior | None, batch_size: int, precision: Precision,
                replicas: Replicas | None = None, backend: Backend | None = None,
                transforms: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> Views:
    conditional = frozenset(n.name for n in networks if n.conditional)
    plain = {n.name: n.module for n in networks}
    transforms = dict(transforms or {})
    unknown = sorted(set(transforms) - set(plain))
    if unknown:
        raise ConfigError(f"an input transform is given for '{unknown[0]}', which is not a network "
                          f"({', '.join(plain)})")
    if backend is None and replicas is None and precision.dtype is None:
        game = Game(_transformed(plain, transforms), prior, batch_size, conditional)
        return Views({p.name: game for p in phases})
    if replicas is not None:
        for net in networks:
            replicas.prepare(net.module)
    compiled = {n.name: compile_module(n.module, backend) for n in networks} if backend is not None else {}
    views, wrappers = Views({}), {}
    for phase in phases:
        eager = needs_double_backward(phase.loss)  # AOTAutograd has no double backward
        modules = {name: m if eager else compiled.get(name, m) for name, m in plain.items()}
        if replicas is not None:
            plan = plans[phase.name]
            enabled = {id(p) for p in plan.enable}
            views.ddp[phase.name] = []
            for net in phase.networks:
                key = (id(modules[net.name]), frozenset(id(p) for p in net.all_params if id(p) in enabled))
                if key not in wrappers:
                    with plan():  # DDP registers the parameters that require grad at wrap time
                        wrappers[key] = replicas.wrap(modules[net.name])
                modules[net.name] = wrappers[key]
                views.ddp[phase.name].append(wrappers[key])
            if eager:
                views.tied.add(phase.name)
        modules = {name: precision.float_outputs(m) for name, m in modules.items()}
        views.games[phase.name] = Game(_transformed(modules, transforms), prior, batch_size, conditional)
    return views


class TransformInput(nn.Module):
    """Calls ``module`` on ``transform(first input)``; the other inputs (labels, codes) pass unchanged."""

    def __init__(self, module: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.module, self.transform = module, transform

    def forward(self, x: torch.Tensor, *rest: Any) -> Any:
        return self.module(self.transform(x), *rest)


def _transformed(modules: dict[str, nn.Module], transforms: dict[str, Callable]) -> dict[str, nn.Module]:
    return {name: TransformInput(m, transforms[name]) if name in transforms else m for name, m in modules.items()}


def zero_tie(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """0 times one element of every parameter, to add to a loss: each parameter gets a (zero) gradient.

    An input-gradient penalty (R1) leaves some parameters without a gradient (D's output bias), and
    DDP's reducer would wait for them forever; StyleGAN2-ADA adds ``logits * 0`` for the same reason.
    """
    return torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0
