"""What a loss term sees: the networks by name, the latent prior, and a few calls every GAN game makes.

A loss term is a callable ``term(game, batch) -> (loss, scalars)``. ``batch`` is the phase's real
:class:`~alttrain.engine.batch.Batch` (``None`` when the term's ``needs_real`` is false);
``scalars`` are detached tensors, each logged as its mean. A term names the networks it uses
(``DiscriminatorLoss(generator="gen", discriminator="disc")``) and reaches them through the game,
never through a position, so a new game is a new term and a config.

The modules a game hands out are the phase's *views* of the networks: compiled forwards, the
trained networks' DDP wrappers, float32 outputs under mixed precision. Labels are passed to exactly
the networks whose ``forward`` takes ``labels``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from alttrain.engine.batch import Batch, LatentPrior
from alttrain.errors import ConfigError

Scalars = dict[str, torch.Tensor]


class LossTerm(Protocol):
    needs_real: bool  # whether the trainer draws a real batch for each call

    def __call__(self, game: Game, batch: Batch | None) -> tuple[torch.Tensor, Scalars]: ...


@dataclass(eq=False)
class Game:
    """The networks of one phase by name, the prior fakes start from, and the fake batch size."""

    modules: Mapping[str, nn.Module]
    prior: LatentPrior | None
    batch_size: int
    conditional: frozenset[str] = frozenset()   # networks whose forward takes labels
    # Fakes made once for several phases of a step (trainer.reuse_fakes): generator -> (fake, labels).
    shared: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    def run(self, name: str, *inputs: Any, labels: torch.Tensor | None = None) -> Any:
        """Network ``name`` on ``inputs`` (and ``labels`` when it is conditional)."""
        module = self.modules[name]
        if name in self.conditional:
            return module(*inputs, labels)
        return module(*inputs)

    def score(self, name: str, *inputs: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        """A discriminator's logits as ``(N,)``: ``(N, 1)`` and ``(N, 1, 1, 1)`` outputs are flattened,
        and of a tuple output (an auxiliary classifier's) the first element is the logit."""
        return logits_of(self.run(name, *inputs, labels=labels))

    def latent(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``z`` and, in a conditional run, labels for ``n`` fakes."""
        if self.prior is None:
            raise ConfigError("this game draws z, but no network has a latent_dim attribute; set model.latent_shape")
        return self.prior.sample(n)

    def fake(self, generator: str, n: int, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n`` samples of ``generator`` and their labels (``None`` unconditional).

        ``detach=True``: no graph into the generator (it is idle). Fakes the step already made for
        this generator (``shared``) are reused: detached for a discriminator's update, with their graph
        for the generator's own.
        """
        shared = self.shared.get(generator)
        if shared is not None and shared[0].shape[0] == n:
            fake, labels = shared
            return (fake.detach(), labels) if detach else (fake, labels)
        if detach:
            with torch.no_grad():  # the generator is idle: no graph through it
                z, labels = self.latent(n)
                return self.run(generator, z, labels=labels), labels
        z, labels = self.latent(n)
        return self.run(generator, z, labels=labels), labels


def logits_of(output: Any) -> torch.Tensor:
    """``(N,)`` logits from a discriminator's output (see :meth:`Game.score`)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    return output if output.dim() == 1 else output.reshape(output.shape[0])
