"""Loss terms: what a phase computes, given the two networks and a real batch.

A term is a callable ``term(gan, real) -> (loss, scalars)``; ``scalars`` are detached tensors,
each logged as its mean. They may be whole batches (``score/real`` is D's logits on the real
batch): the reduction and the host sync are then paid only on the steps the logger writes. ``needs_real`` tells
the trainer whether to draw a real batch for it. The math lives in :mod:`alttrain.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn

from alttrain import losses

Scalars = dict[str, torch.Tensor]


@dataclass(eq=False)
class GANPair:
    """The two networks as loss terms see them (possibly DDP-wrapped), and the latent sampler."""

    generator: nn.Module
    discriminator: nn.Module
    latent_dim: int
    batch_size: int
    device: torch.device = torch.device("cpu")

    def latent(self, n: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.batch_size, self.latent_dim, device=self.device)

    def fake(self, n: int | None = None) -> torch.Tensor:
        return self.generator(self.latent(n))


class LossTerm(Protocol):
    needs_real: bool

    def __call__(self, gan: GANPair, real: torch.Tensor | None) -> tuple[torch.Tensor, Scalars]: ...


class DiscriminatorLoss:
    """D's main loss: ``fn(D(real), D(G(z)))``, fakes made without a graph into G.

    ``gp_weight > 0`` adds the WGAN-GP gradient penalty on per-sample interpolates.
    """

    needs_real = True

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], gp_weight: float = 0.0):
        self.fn, self.gp_weight = fn, float(gp_weight)

    def __call__(self, gan: GANPair, real: torch.Tensor) -> tuple[torch.Tensor, Scalars]:
        with torch.no_grad():  # G is idle: no graph through it
            fake = gan.fake(real.shape[0])
        real_logits = gan.discriminator(real)
        fake_logits = gan.discriminator(fake)
        loss = self.fn(real_logits, fake_logits)
        scalars = {"score/real": real_logits.detach(), "score/fake": fake_logits.detach()}
        if self.gp_weight > 0:
            penalty = losses.gradient_penalty(gan.discriminator, real, fake)
            loss = loss + self.gp_weight * penalty
            scalars["penalty/gp"] = penalty.detach()
        return loss, scalars


class GeneratorLoss:
    """G's loss: ``fn(D(G(z)))``. Gradients flow through the idle D into G; D gets none."""

    needs_real = False

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    def __call__(self, gan: GANPair, real: torch.Tensor | None) -> tuple[torch.Tensor, Scalars]:
        fake_logits = gan.discriminator(gan.fake())
        return self.fn(fake_logits), {"score/fake_for_G": fake_logits.detach()}


class R1Penalty:
    """R1 regulariser ``gamma/2 * E ||grad_x D(x)||^2`` on real data (Mescheder et al. 2018).

    Meant for a lazy phase (``every: 16, weight: 16``) as in StyleGAN2.
    """

    needs_real = True

    def __init__(self, gamma: float = 10.0):
        self.gamma = float(gamma)

    def __call__(self, gan: GANPair, real: torch.Tensor) -> tuple[torch.Tensor, Scalars]:
        penalty = losses.r1_penalty(gan.discriminator, real)
        return 0.5 * self.gamma * penalty, {"penalty/r1": penalty.detach()}
