"""Differentiable augmentation of what a discriminator sees: fixed (DiffAugment) or adaptive (ADA).

An augmentation is a callable ``x -> x`` on ``(N, C, H, W)`` images with its own random stream;
the trainer applies it to a network's first input in every phase (``Trainer(transforms=...)``),
reals and fakes alike, with gradients flowing through it into the generator. ADA's ``p`` is moved
by :class:`ADAController`, a callback.
"""

from alttrain.augment.ada import AdaptiveAugment
from alttrain.augment.base import Augmentation
from alttrain.augment.controller import ADAController
from alttrain.augment.diffaug import DiffAugment

__all__ = ["ADAController", "AdaptiveAugment", "Augmentation", "DiffAugment"]
