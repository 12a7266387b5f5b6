"""BiGAN / ALI loss terms: a discriminator on (sample, code) pairs, and G with E trained together against it.

The encoder phase trains the generator and the encoder in one update (``networks: [generator,
encoder]``); each steps its own optimizer. Their loss is the discriminator's with the labels swapped
(ALI's inverted labels): ``(G(z), z)`` should look real and ``(x, E(x))`` fake.

``reconstruction_weight > 0`` adds ALICE's cycle term (Li et al. 2017) ``E||x - G(E(x))||^2``, which
ties each code back to the sample it came from; with 0 the term is pure BiGAN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alttrain.engine.batch import Batch
from alttrain.engine.game import Game, Scalars

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BiGANDiscriminatorLoss:
    """``fn(D(x, E(x)), D(G(z), z))``: real pairs against generated pairs; G and E are idle."""

    needs_real = True

    def __init__(self, fn: Loss, generator: str = "generator", encoder: str = "encoder",
                 discriminator: str = "discriminator"):
        self.fn, self.generator, self.encoder, self.discriminator = fn, generator, encoder, discriminator

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        real = batch.samples
        with torch.no_grad():  # G and E are idle: no graph through them
            z, labels = game.latent(real.shape[0])
            fake = game.run(self.generator, z, labels=labels)
            code = game.run(self.encoder, real)
        real_logits = game.score(self.discriminator, real, code)
        fake_logits = game.score(self.discriminator, fake, z)
        return self.fn(real_logits, fake_logits), {"score/real": real_logits.detach(),
                                                   "score/fake": fake_logits.detach()}


class BiGANEncoderGeneratorLoss:
    """``fn(D(G(z), z), D(x, E(x)))`` (D's loss, labels swapped) for G and E, plus an optional cycle term."""

    needs_real = True

    def __init__(self, fn: Loss, reconstruction_weight: float = 0.0, generator: str = "generator",
                 encoder: str = "encoder", discriminator: str = "discriminator"):
        self.fn, self.reconstruction_weight = fn, float(reconstruction_weight)
        self.generator, self.encoder, self.discriminator = generator, encoder, discriminator

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        real = batch.samples
        z, labels = game.latent(real.shape[0])
        code = game.run(self.encoder, real)
        fake_logits = game.score(self.discriminator, game.run(self.generator, z, labels=labels), z)
        real_logits = game.score(self.discriminator, real, code)
        loss = self.fn(fake_logits, real_logits)  # generated pairs as "real", data pairs as "fake"
        scalars = {"score/fake_for_G": fake_logits.detach(), "score/real_for_E": real_logits.detach()}
        if self.reconstruction_weight > 0:
            rebuilt = game.run(self.generator, code, labels=batch.labels)
            cycle = (rebuilt - real).pow(2).sum(1).mean()
            loss = loss + self.reconstruction_weight * cycle
            scalars["penalty/cycle"] = cycle.detach()
        return loss, scalars


class JointR1Penalty:
    """R1 on the discriminator's real pairs: ``gamma/2 * E ||grad_(x, c) D(x, c)||^2`` with ``c = E(x)``.

    The code is computed without a graph into the idle encoder and differentiated like ``x``; meant for
    a lazy phase (``every: 4, weight: 4``) as :class:`~alttrain.games.terms.R1Penalty` is.
    """

    needs_real = True
    double_backward = True

    def __init__(self, gamma: float = 1.0, encoder: str = "encoder", discriminator: str = "discriminator"):
        self.gamma, self.encoder, self.discriminator = float(gamma), encoder, discriminator

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        with torch.no_grad():
            code = game.run(self.encoder, batch.samples)
        with torch.enable_grad():
            x = batch.samples.detach().requires_grad_(True)
            c = code.detach().requires_grad_(True)
            logits = game.score(self.discriminator, x, c)
            # Pairs are scored independently, so the gradient of the sum is each pair's own.
            gx, gc = torch.autograd.grad(logits.sum(), [x, c], create_graph=True)
        penalty = (gx.flatten(1).pow(2).sum(1) + gc.pow(2).sum(1)).mean()
        return 0.5 * self.gamma * penalty, {"penalty/r1": penalty.detach()}
