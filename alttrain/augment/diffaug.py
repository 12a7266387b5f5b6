"""DiffAugment: the same random, differentiable transforms on every image a discriminator sees.

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training": augmenting reals
only teaches G to produce augmented images, augmenting reals and fakes alike (and differentiably,
so G's update sees the augmented D) regularises D without changing what G must match. Their three
policies, applied in this order with the paper's strengths as defaults:

* ``color``: brightness ``x + b``, ``b ~ U[-brightness, brightness]``; saturation (each pixel's
  distance to its channel mean scaled by ``U[1 - saturation, 1 + saturation]``, a no-op on one
  channel); contrast (distance to the image mean scaled by ``U[1 - contrast, 1 + contrast]``);
* ``translation``: shift by whole pixels, up to ``translation`` of each side either way, zeros
  shifted in;
* ``cutout``: a square of ``cutout`` of the side zeroed, centred uniformly on the image.

A strength of 0 leaves that transform out. Every parameter is drawn per image.
"""

from __future__ import annotations

from typing import Any

import torch

from alttrain.augment.base import Augmentation
from alttrain.augment.ops import (
    cutout,
    cutout_corners,
    fraction_of,
    per_sample,
    translate_zero,
)
from alttrain.checks import check_range


def _fraction(key: str, value: Any) -> None:
    check_range(key, value, 0.0, 1.0)


# augment.transforms.<name> for augment=diffaug: the allowed values (the config layer checks them).
FIELDS = {"translation": _fraction, "cutout": _fraction, "brightness": lambda k, v: check_range(k, v, 0.0, 2.0),
          "saturation": _fraction, "contrast": _fraction}


class DiffAugment(Augmentation):
    """Color, translation and cutout, each drawn per image (see the module docstring for the math)."""

    kind = "diffaug"

    def __init__(self, translation: float = 0.125, cutout: float = 0.5, brightness: float = 0.5,
                 saturation: float = 1.0, contrast: float = 0.5, seed: int = 0, rank: int = 0,
                 device: torch.device | str = "cpu"):
        super().__init__(seed, rank, device)
        self.translation, self.cutout = float(translation), float(cutout)
        self.brightness, self.saturation, self.contrast = float(brightness), float(saturation), float(contrast)

    def settings(self) -> dict[str, Any]:
        return {"translation": self.translation, "cutout": self.cutout, "brightness": self.brightness,
                "saturation": self.saturation, "contrast": self.contrast}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g, n = self.stream.next(), x.shape[0]
        s = self.stream
        if self.brightness:
            x = x + per_sample(s.uniform(g, n, -self.brightness, self.brightness))
        if self.saturation:
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * per_sample(s.uniform(g, n, 1 - self.saturation, 1 + self.saturation)) + mean
        if self.contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * per_sample(s.uniform(g, n, 1 - self.contrast, 1 + self.contrast)) + mean
        h, w = x.shape[-2:]
        if self.translation:
            max_h, max_w = fraction_of(h, self.translation), fraction_of(w, self.translation)
            x = translate_zero(x, s.integers(g, n, -max_h, max_h), s.integers(g, n, -max_w, max_w))
        if self.cutout:
            size_h, size_w = fraction_of(h, self.cutout), fraction_of(w, self.cutout)
            x = cutout(x, size_h, size_w, cutout_corners(s, g, n, h, size_h), cutout_corners(s, g, n, w, size_w))
        return x
