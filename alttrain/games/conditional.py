"""ACGAN's loss terms (Odena et al. 2017): the adversarial loss plus an auxiliary classifier's.

The discriminator (e.g. :class:`~alttrain.models.conditional.ACGANDiscriminator`) takes no labels and
returns ``(logit, class_logits)``; the generator is conditional. As in StudioGAN, D's classifier
learns from real samples only (fakes would teach it the generator's mistakes), and G is rewarded when
its fakes are classified as the class it was asked for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from alttrain.engine.batch import Batch
from alttrain.engine.game import Game, Scalars
from alttrain.errors import ConfigError
from alttrain.games import losses


def _split(output, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(output, (tuple, list)) or len(output) < 2:
        raise ConfigError(f"the ACGAN loss needs model.{name} to return (logit, class_logits), e.g. "
                          "alttrain.models.conditional.ACGANDiscriminator")
    logit, class_logits = output[0], output[1]
    return (logit if logit.dim() == 1 else logit.reshape(logit.shape[0])), class_logits


class ACGANDiscriminatorLoss:
    """``fn(D(x), D(G(z, c))) + class_weight * CE(classifier(x), y)``."""

    needs_real = True
    fakes = "detached"  # see alttrain.engine.reuse

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], class_weight: float = 1.0,
                 generator: str = "generator", discriminator: str = "discriminator"):
        self.fn, self.class_weight = fn, float(class_weight)
        self.generator, self.discriminator = generator, discriminator

    def __call__(self, game: Game, batch: Batch) -> tuple[torch.Tensor, Scalars]:
        real, labels = batch
        if labels is None:
            raise ConfigError("the ACGAN loss needs labelled data")
        fake, _ = game.fake(self.generator, real.shape[0], detach=True)
        real_logits, real_classes = _split(game.run(self.discriminator, real), self.discriminator)
        fake_logits, _ = _split(game.run(self.discriminator, fake), self.discriminator)
        classification = losses.auxiliary_classification(real_classes, labels)
        loss = self.fn(real_logits, fake_logits) + self.class_weight * classification
        return loss, {"score/real": real_logits.detach(), "score/fake": fake_logits.detach(),
                      "acgan/real_class_loss": classification.detach(),
                      "acgan/real_accuracy": (real_classes.detach().argmax(1) == labels).float()}


class ACGANGeneratorLoss:
    """``fn(D(G(z, c))) + class_weight * CE(classifier(G(z, c)), c)``."""

    needs_real = False
    fakes = "graph"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], class_weight: float = 1.0,
                 generator: str = "generator", discriminator: str = "discriminator"):
        self.fn, self.class_weight = fn, float(class_weight)
        self.generator, self.discriminator = generator, discriminator

    def __call__(self, game: Game, batch: Batch | None) -> tuple[torch.Tensor, Scalars]:
        fake, labels = game.fake(self.generator, game.batch_size)
        if labels is None:
            raise ConfigError("the ACGAN loss needs a conditional generator (its forward takes labels)")
        logits, classes = _split(game.run(self.discriminator, fake), self.discriminator)
        classification = losses.auxiliary_classification(classes, labels)
        return self.fn(logits) + self.class_weight * classification, {
            "score/fake_for_G": logits.detach(), "acgan/fake_class_loss": classification.detach()}
