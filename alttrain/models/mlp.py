"""Fully connected generator and discriminator for low-dimensional toy data (2-D Gaussian mixtures).

The shape follows the toy-GAN literature (Unrolled GAN, VEEGAN, PacGAN): a few equally wide hidden
layers. Hidden layers are plain ``nn.Linear`` modules and the activation is applied in ``forward``,
so parameter names are short and every index is a layer:

====================  =========================================================
``body.{i}.weight``   hidden layer ``i`` (``0 <= i < depth``), also ``.bias``
``head.weight``       output layer (G: to data space, D: to one logit), ``.bias``
====================  =========================================================

Patterns that read well: ``body.0.*`` (first layer), ``head.*`` (last layer), ``*.bias``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alttrain.checks import check_int, check_range


def _positive_int(owner: str, name: str, value: object, minimum: int = 1) -> int:
    return check_int(f"{owner}: {name}", value, minimum)


def _hidden_layers(owner: str, in_dim: int, hidden_dim: int, depth: int) -> nn.ModuleList:
    _positive_int(owner, "hidden_dim", hidden_dim)
    _positive_int(owner, "depth", depth)
    widths = [in_dim] + [hidden_dim] * depth
    return nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))


class MLPGenerator(nn.Module):
    """Maps ``z`` of shape ``(B, latent_dim)`` to samples of shape ``(B, out_dim)``.

    ``depth`` hidden layers of width ``hidden_dim`` with ReLU; the output layer is linear so the
    samples are unbounded, like the data they imitate. Parameters: ``body.{i}.*``, ``head.*``.
    """

    def __init__(self, latent_dim: int = 2, out_dim: int = 2, hidden_dim: int = 128, depth: int = 2):
        super().__init__()
        owner = type(self).__name__
        self.latent_dim = _positive_int(owner, "latent_dim", latent_dim)
        _positive_int(owner, "out_dim", out_dim)
        self.body = _hidden_layers(owner, latent_dim, hidden_dim, depth)
        self.head = nn.Linear(hidden_dim, out_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for layer in self.body:
            h = F.relu(layer(h))
        return self.head(h)


class MLPDiscriminator(nn.Module):
    """Maps samples of shape ``(B, in_dim)`` to real-vs-fake logits of shape ``(B,)``.

    ``depth`` hidden layers of width ``hidden_dim`` with LeakyReLU(``negative_slope``). The leak
    keeps the input gradient the generator learns from (and that gradient penalties measure) from
    vanishing on dead units; ``negative_slope=0`` gives the plain-ReLU critic of the papers.
    Parameters: ``body.{i}.*``, ``head.*``.
    """

    def __init__(self, in_dim: int = 2, hidden_dim: int = 128, depth: int = 2, negative_slope: float = 0.2):
        super().__init__()
        owner = type(self).__name__
        _positive_int(owner, "in_dim", in_dim)
        self.negative_slope = check_range(f"{owner}: negative_slope", negative_slope, 0, 1, high_open=True)
        self.body = _hidden_layers(owner, in_dim, hidden_dim, depth)
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.body:
            h = F.leaky_relu(layer(h), self.negative_slope, inplace=True)  # see alttrain/scale/compile.py
        return self.head(h).squeeze(1)
