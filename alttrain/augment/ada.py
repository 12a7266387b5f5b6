"""The ADA pipeline: differentiable transforms, each applied to each image with probability ``p``.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data": when every
transform is applied with probability ``p < 1``, the augmented distribution still determines the
clean one, so the augmentations do not leak into G's samples (their Fig. 3: safe up to p ~ 0.8),
and ``p`` itself is steered by :class:`~alttrain.augment.controller.ADAController`. In the paper's
order, with its ``bgc`` strengths as defaults (a strength of 0, or ``false``, leaves a transform out):

* integer moves, exact gathers (mirror padding): ``xflip`` (left-right), ``rotate90`` (a
  quarter turn ``k ~ U{0..3}`` times; square images), ``translation`` (whole pixels,
  ``t ~ U[-translation, translation]`` of each side);
* one bilinear warp (``affine_grid`` + ``grid_sample``, mirror padding) for ``scale``
  (isotropic, ``2^N(0, scale^2)``), ``rotate`` (``U[-rotate, rotate]`` half turns) and ``shift``
  (fractional translation, ``N(0, shift^2)`` of each side);
* colour, about mid-grey 0 of [-1, 1] images: ``brightness`` (``x + N(0, brightness^2)``),
  ``contrast`` (``x * 2^N(0, contrast^2)``), ``saturation`` (distance to the channel mean scaled
  by ``2^N(0, saturation^2)``; skipped on one channel, where it is the identity);
* ``cutout``: a square of ``cutout`` of the side zeroed (DeVries & Taylor 2017).

Each transform decides per image, independently. Images that no transform picked come out
bit-identical, so ``p = 0`` is the identity exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from alttrain.augment.base import Augmentation
from alttrain.augment.ops import (
    cutout,
    cutout_corners,
    fraction_of,
    move_pixels,
    per_sample,
    positions,
    reflect,
)
from alttrain.checks import check_bool, check_range
from alttrain.errors import ConfigError


def _strength(high: float):
    return lambda key, value: check_range(key, value, 0.0, high)


# augment.transforms.<name> for augment=ada: the allowed values (the config layer checks them).
FIELDS = {"xflip": check_bool, "rotate90": check_bool, "translation": _strength(0.5), "scale": _strength(2.0),
          "rotate": _strength(1.0), "shift": _strength(0.5), "brightness": _strength(2.0),
          "contrast": _strength(2.0), "saturation": _strength(2.0), "cutout": _strength(1.0)}


class AdaptiveAugment(Augmentation):
    """The ADA transforms with probability ``p``, a 0-d tensor on ``device`` that the controller moves."""

    kind = "ada"

    def __init__(self, xflip: bool = True, rotate90: bool = True, translation: float = 0.125, scale: float = 0.2,
                 rotate: float = 1.0, shift: float = 0.125, brightness: float = 0.2, contrast: float = 0.5,
                 saturation: float = 1.0, cutout: float = 0.0, p: float = 0.0, seed: int = 0, rank: int = 0,
                 device: torch.device | str = "cpu"):
        super().__init__(seed, rank, device)
        self.xflip, self.rotate90 = bool(xflip), bool(rotate90)
        self.translation, self.scale, self.rotate, self.shift = map(float, (translation, scale, rotate, shift))
        self.brightness, self.contrast, self.saturation = map(float, (brightness, contrast, saturation))
        self.cutout = float(cutout)
        self.p = torch.tensor(float(check_range("augment.ada.p", p, 0.0, 1.0)), device=self.device)

    def settings(self) -> dict[str, Any]:
        names = ("xflip", "rotate90", "translation", "scale", "rotate", "shift", "brightness", "contrast",
                 "saturation", "cutout")
        return {name: getattr(self, name) for name in names}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "p": self.p.detach().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.p.copy_(state["p"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        g = self.stream.next()
        x = self._integer_moves(g, x)
        x = self._warp(g, x)
        x = self._colour(g, x)
        if self.cutout:
            n, _, h, w = x.shape
            size_h, size_w = fraction_of(h, self.cutout), fraction_of(w, self.cutout)
            chosen = self._chosen(g, n)
            top, left = cutout_corners(self.stream, g, n, h, size_h), cutout_corners(self.stream, g, n, w, size_w)
            x = cutout(x, size_h, size_w, top, left, apply=chosen)
        return x

    def _chosen(self, g: torch.Generator, n: int) -> torch.Tensor:
        """``(n,)`` bools: each image picked with probability p (U[0, 1) < p: never at 0, always at 1)."""
        return self.stream.uniform(g, n) < self.p

    def _integer_moves(self, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        if not (self.xflip or self.rotate90 or self.translation):
            return x
        n, _, h, w = x.shape
        if self.rotate90 and h != w:
            raise ConfigError(f"augment.transforms.rotate90 turns square images only, got {h}x{w}; set "
                              "augment.transforms.rotate90=false")
        s, dev = self.stream, x.device
        zero = torch.zeros(n, dtype=torch.long, device=dev)
        flip = self._chosen(g, n) if self.xflip else zero.bool()
        turns = torch.where(self._chosen(g, n), s.integers(g, n, 0, 3), zero) if self.rotate90 else zero
        dy = dx = zero
        if self.translation:
            chosen = self._chosen(g, n)
            dy = torch.where(chosen, torch.round(s.uniform(g, n, -1, 1) * self.translation * h).long(), zero)
            dx = torch.where(chosen, torch.round(s.uniform(g, n, -1, 1) * self.translation * w).long(), zero)
        # A flip then k quarter turns (torch.rot90's direction) is a transpose when k is odd, then a
        # flip of the rows and/or of the columns; the shift comes last, so it is undone first.
        if self.rotate90:
            x = torch.where(per_sample(turns % 2 == 1), x.transpose(2, 3), x)
        flip_rows = ((turns == 1) & ~flip) | (turns == 2) | ((turns == 3) & flip)
        flip_cols = ((turns == 0) & flip) | ((turns == 2) & ~flip) | (turns == 3)
        rows = reflect(positions(n, h, dev) - dy.view(-1, 1), h)
        cols = reflect(positions(n, w, dev) - dx.view(-1, 1), w)
        rows = torch.where(flip_rows.view(-1, 1), h - 1 - rows, rows)
        cols = torch.where(flip_cols.view(-1, 1), w - 1 - cols, cols)
        return move_pixels(x, rows, cols)

    def _warp(self, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        if not (self.scale or self.rotate or self.shift):
            return x
        n, _, h, w = x.shape
        s, dev = self.stream, x.device
        moved = torch.zeros(n, dtype=torch.bool, device=dev)
        log2_scale, angle, t = torch.zeros(n, device=dev), torch.zeros(n, device=dev), torch.zeros(n, 2, device=dev)
        if self.scale:
            chosen = self._chosen(g, n)
            log2_scale, moved = torch.where(chosen, s.normal(g, n, self.scale), log2_scale), moved | chosen
        if self.rotate:
            chosen = self._chosen(g, n)
            angle, moved = torch.where(chosen, s.uniform(g, n, -1, 1) * (math.pi * self.rotate), angle), moved | chosen
        if self.shift:
            chosen = self._chosen(g, n)
            drawn = torch.stack([s.normal(g, n, self.shift) * w, s.normal(g, n, self.shift) * h], dim=1)
            t, moved = torch.where(chosen.view(-1, 1), drawn, t), moved | chosen
        grid = F.affine_grid(_inverse_affine(log2_scale, angle, t, h, w).to(x.dtype), list(x.shape),
                             align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return torch.where(per_sample(moved), warped, x)

    def _colour(self, g: torch.Generator, x: torch.Tensor) -> torch.Tensor:
        # Unpicked images get the neutral value (add 0, multiply by 1), which leaves them exactly as they were.
        n, s = x.shape[0], self.stream
        if self.brightness:
            x = x + per_sample(torch.where(self._chosen(g, n), s.normal(g, n, self.brightness), 0.0))
        if self.contrast:
            x = x * per_sample(torch.where(self._chosen(g, n), torch.exp2(s.normal(g, n, self.contrast)), 1.0))
        if self.saturation and x.shape[1] > 1:
            chosen = self._chosen(g, n)
            factor = torch.where(chosen, torch.exp2(s.normal(g, n, self.saturation)) - 1, 0.0)
            x = x + (x - x.mean(dim=1, keepdim=True)) * per_sample(factor)  # mean + (x - mean) * 2^N(0, s^2)
        return x


def _inverse_affine(log2_scale: torch.Tensor, angle: torch.Tensor, t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``affine_grid``'s ``theta`` (output -> input, normalised coordinates) of the content move
    ``u = 2^log2_scale * R(angle) v + t`` in pixel units about the image centre: ``v = A (u - t)`` with
    ``A = 2^-log2_scale R(-angle)``, conjugated by ``D = diag(w/2, h/2)`` (normalised -> pixels).

    Written out with Python scalars for the sizes, so no host tensor is copied to the device."""
    inv = torch.exp2(-log2_scale)
    cos, sin = torch.cos(angle) * inv, torch.sin(angle) * inv  # A = [[cos, sin], [-sin, cos]]
    bx, by = -(cos * t[:, 0] + sin * t[:, 1]), sin * t[:, 0] - cos * t[:, 1]  # b = -A t
    return torch.stack([torch.stack([cos, sin * (h / w), bx * (2 / w)], dim=-1),
                        torch.stack([-sin * (w / h), cos, by * (2 / h)], dim=-1)], dim=-2)
