"""Loss terms of the GAN game: what a phase computes from the networks it names and a real batch.

A term is a callable ``term(game, batch) -> (loss, scalars)`` (see :mod:`alttrain.engine.game`);
``scalars`` are detached tensors, each logged as its mean. They may be whole batches
(``score/real`` is D's logits on the real batch): the reduction and the host sync are then paid
only on the steps the logger writes. ``needs_real`` tells the trainer whether to draw a real batch;
``double_backward`` that the term differentiates through an input gradient (compiled forwards
cannot). Each term names the networks it uses, so any number of networks can play. The math lives
in :mod:`alttrain.games.losses`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alttrain.engine.batch import Batch
from alttrain.engine.game import Game, Scalars
from alttrain.games import losses


class DiscriminatorLoss:
    """D's main loss: ``fn(D(real), D(G(z)))``, fakes made without a graph into G.

    Conditional networks get the real batch's labels for reals and the prior's for fakes.
    ``gp_weight > 0`` adds the WGAN-GP gradient penalty on per-sample interpolates.
    """

    needs_real = True
    fakes = "detached"  # scores the generator's fakes without their graph: they can be the step's shared ones

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], gp_weight: float = 0.0,
                 generator: str = "generator", discriminator: str = "discriminator"):
        self.fn, self.gp_weight = fn, float(gp_weight)
        self.generator, self.discriminator = generator, discriminator
        self.double_backward = self.gp_weight > 0

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        real, labels = batch
        fake, fake_labels = game.fake(self.generator, real.shape[0], detach=True)
        real_logits = game.score(self.discriminator, real, labels=labels)
        fake_logits = game.score(self.discriminator, fake, labels=fake_labels)
        loss = self.fn(real_logits, fake_logits)
        scalars = {"score/real": real_logits.detach(), "score/fake": fake_logits.detach()}
        if self.gp_weight > 0:
            # Interpolates between a real and a fake of different classes have no single label: the
            # penalty scores them under the real sample's label.
            penalty = losses.gradient_penalty(lambda x: game.score(self.discriminator, x, labels=labels), real, fake)
            loss = loss + self.gp_weight * penalty
            scalars["penalty/gp"] = penalty.detach()
        return loss, scalars


class GeneratorLoss:
    """G's loss: ``fn(D(G(z)))``. Gradients flow through the idle D into G; D gets none."""

    needs_real = False
    fakes = "graph"  # backpropagates through the generator's fakes: the step's shared ones if D made them

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], generator: str = "generator",
                 discriminator: str = "discriminator"):
        self.fn, self.generator, self.discriminator = fn, generator, discriminator

    def __call__(self, game: Game, batch: Batch | None) -> tuple[torch.Tensor, Scalars]:
        fake, labels = game.fake(self.generator, game.batch_size)
        fake_logits = game.score(self.discriminator, fake, labels=labels)
        return self.fn(fake_logits), {"score/fake_for_G": fake_logits.detach()}


class R1Penalty:
    """R1 regulariser ``gamma/2 * E ||grad_x D(x)||^2`` on real data (Mescheder et al. 2018).

    Meant for a lazy phase (``every: 16, weight: 16``) as in StyleGAN2.
    """

    needs_real = True
    double_backward = True

    def __init__(self, gamma: float = 10.0, discriminator: str = "discriminator"):
        self.gamma, self.discriminator = float(gamma), discriminator

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        real, labels = batch
        penalty = losses.r1_penalty(lambda x: game.score(self.discriminator, x, labels=labels), real)
        return 0.5 * self.gamma * penalty, {"penalty/r1": penalty.detach()}
