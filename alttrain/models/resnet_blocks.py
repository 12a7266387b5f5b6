"""The residual blocks and the self-attention block of the ResNet GANs in :mod:`alttrain.models.resnet`.

The layouts are those of the SNGAN code (Miyato et al. 2018, chainer-gan-lib) and Mimicry:

* :class:`UpBlock` (generator): ``BN-ReLU-up×2-conv3×3-BN-ReLU-conv3×3`` plus an ``up×2-conv1×1`` shortcut;
  with ``num_classes`` both BatchNorms are conditional (per-class gain and bias).
* :class:`DownBlock` (discriminator): ``ReLU-conv3×3-ReLU-conv3×3[-avgpool]`` plus a ``conv1×1[-avgpool]``
  shortcut (the identity when the shape is kept); ``first=True`` is the "optimized" input block, which
  has no ReLU before its first convolution (it sees the image) and always pools.
* :class:`SelfAttention` (SAGAN, Zhang et al. 2019): a spectrally normalised non-local block whose
  output is scaled by a learned ``gamma`` that starts at 0, so a fresh block is the identity.

Initialisation (the SNGAN code's): xavier-uniform weights with gain sqrt(2) for the 3×3 convolutions
inside the residual branch (they follow a ReLU) and gain 1 for shortcuts and attention; zero biases.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from alttrain.models.conditional import ConditionalBatchNorm2d


def xavier(module: nn.Module, gain: float = 1.0) -> nn.Module:
    nn.init.xavier_uniform_(module.weight, gain)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return module


def conv(in_ch: int, out_ch: int, kernel: int, gain: float = 1.0, bias: bool = True) -> nn.Conv2d:
    return xavier(nn.Conv2d(in_ch, out_ch, kernel, 1, kernel // 2, bias=bias), gain)


class UpBlock(nn.Module):
    """Doubles the side: ``(B, in_ch, S, S)`` -> ``(B, out_ch, 2S, 2S)``; conditional BatchNorm when ``num_classes``."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int | None = None):
        super().__init__()
        self.conditional = num_classes is not None
        self.norm1 = ConditionalBatchNorm2d(in_ch, num_classes) if self.conditional else nn.BatchNorm2d(in_ch)
        self.conv1 = conv(in_ch, out_ch, 3, math.sqrt(2))
        self.norm2 = ConditionalBatchNorm2d(out_ch, num_classes) if self.conditional else nn.BatchNorm2d(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, math.sqrt(2))
        self.shortcut = conv(in_ch, out_ch, 1)

    def _norm(self, norm: nn.Module, h: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return norm(h, labels) if self.conditional else norm(h)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self._norm(self.norm1, x, labels)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self._norm(self.norm2, self.conv1(h), labels)))
        # A 1×1 convolution commutes with nearest up-sampling: convolving first is the same map at 1/4 the cost.
        return h + F.interpolate(self.shortcut(x), scale_factor=2.0, mode="nearest")


class DownBlock(nn.Module):
    """``(B, in_ch, S, S)`` -> ``(B, out_ch, S/2, S/2)`` when ``down`` (``first`` implies it), else keeps the side."""

    def __init__(self, in_ch: int, out_ch: int, down: bool, first: bool = False):
        super().__init__()
        self.first, self.down = first, down or first
        # The input block widens at once (the image has 1-3 channels); later blocks keep in_ch inside.
        hidden = out_ch if first else in_ch
        self.conv1 = conv(in_ch, hidden, 3, math.sqrt(2))
        self.conv2 = conv(hidden, out_ch, 3, math.sqrt(2))
        self.shortcut = conv(in_ch, out_ch, 1) if (self.down or in_ch != out_ch) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x if self.first else F.relu(x))  # the input block sees the image: no ReLU before it
        h = self.conv2(F.relu(h))
        if self.down:
            h = F.avg_pool2d(h, 2)
        if self.shortcut is None:
            return h + x
        # Average pooling and a 1×1 convolution commute (both linear, per position): pooling first is cheaper.
        return h + self.shortcut(F.avg_pool2d(x, 2) if self.down else x)


class SelfAttention(nn.Module):
    """SAGAN's non-local block on ``(B, C, S, S)`` maps (S even): ``x + gamma · out(g(x) · softmax(θ(x)ᵀ φ(x)))``.

    Queries and keys have ``C/8`` channels and values ``C/2`` (at least 1), keys and values are
    max-pooled 2×2 (SAGAN's and BigGAN's code: a quarter of the attention cost), every 1×1
    convolution is spectrally normalised and bias-free, and ``gamma`` starts at 0.
    """

    def __init__(self, channels: int):
        super().__init__()
        key, value = max(channels // 8, 1), max(channels // 2, 1)
        self.theta = spectral_norm(conv(channels, key, 1, bias=False))
        self.phi = spectral_norm(conv(channels, key, 1, bias=False))
        self.g = spectral_norm(conv(channels, value, 1, bias=False))
        self.out = spectral_norm(conv(value, channels, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        query = self.theta(x).flatten(2)                      # (B, C/8, HW)
        keys = F.max_pool2d(self.phi(x), 2).flatten(2)        # (B, C/8, HW/4)
        values = F.max_pool2d(self.g(x), 2).flatten(2)        # (B, C/2, HW/4)
        attention = torch.softmax(query.transpose(1, 2) @ keys, dim=-1)  # (B, HW, HW/4): each position's weights
        mixed = (values @ attention.transpose(1, 2)).view(b, -1, h, w)    # (B, C/2, H, W)
        return x + self.gamma * self.out(mixed)
