"""The two extra networks of BiGAN / ALI (Donahue et al. 2017; Dumoulin et al. 2017) on low-dimensional data.

An encoder ``E`` maps data to codes, and the discriminator scores *pairs* ``(x, z)``: real data with
its code ``(x, E(x))`` against generated data with the code it came from ``(G(z), z)``. When D cannot
tell the two joint distributions apart, ``E`` inverts ``G``. The generator is the usual
:class:`~alttrain.models.mlp.MLPGenerator`.

Parameter names: ``body.{i}.*`` (hidden layers), ``head.*`` (output layer), as in the MLPs.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alttrain.checks import check_range
from alttrain.models.mlp import _hidden_layers, _positive_int


class MLPEncoder(nn.Module):
    """Maps samples ``(B, in_dim)`` to codes ``(B, latent_dim)``: ``depth`` ReLU layers, then a linear head."""

    def __init__(self, in_dim: int = 2, latent_dim: int = 2, hidden_dim: int = 128, depth: int = 2):
        super().__init__()
        owner = type(self).__name__
        _positive_int(owner, "in_dim", in_dim)
        self.code_dim = _positive_int(owner, "latent_dim", latent_dim)  # not latent_dim: it draws no z
        self.body = _hidden_layers(owner, in_dim, hidden_dim, depth)
        self.head = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for layer in self.body:
            h = F.relu(layer(h))
        return self.head(h)


class JointMLPDiscriminator(nn.Module):
    """Scores pairs: samples ``(B, in_dim)`` and codes ``(B, latent_dim)`` -> logits ``(B,)``."""

    def __init__(self, in_dim: int = 2, latent_dim: int = 2, hidden_dim: int = 128, depth: int = 2,
                 negative_slope: float = 0.2):
        super().__init__()
        owner = type(self).__name__
        _positive_int(owner, "in_dim", in_dim)
        _positive_int(owner, "latent_dim", latent_dim)
        self.negative_slope = check_range(f"{owner}: negative_slope", negative_slope, 0, 1, high_open=True)
        self.body = _hidden_layers(owner, in_dim + latent_dim, hidden_dim, depth)
        self.head = nn.Linear(hidden_dim, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, z], dim=1)
        for layer in self.body:
            h = F.leaky_relu(layer(h), self.negative_slope, inplace=True)  # see alttrain/scale/compile.py
        return self.head(h).squeeze(1)
