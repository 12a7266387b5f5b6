"""ResNet SNGAN generator and discriminator (Miyato et al. 2018), class-conditional and self-attention variants.

The CIFAR-10 ResNet of the SNGAN paper's appendix, laid out as in its code and in Mimicry:

* generator: ``stem`` (linear z -> 4×4 map), one :class:`~alttrain.models.resnet_blocks.UpBlock` per
  doubling (3 at ``image_size=32``, 4 at 64), then ``BN-ReLU-conv3×3-tanh`` (``norm``, ``to_image``);
* discriminator: an input block and down-sampling :class:`~alttrain.models.resnet_blocks.DownBlock` s,
  spectral norm on every weight, ReLU, a sum over positions, ``head`` (linear, one logit per sample).
  At 32 the feature map goes 32 -> 16 -> 8 and two more blocks keep 8×8 (the paper's CIFAR model); at
  64 it halves in each of 5 blocks, down to 2×2 (Mimicry's SNGAN-64).

``width`` is the channel count of the deepest blocks (G's 4×4 end, D's last blocks). At 32 every block
has it (the paper: 256 for G, 128 for D); at 64 it halves block by block away from the deep end
(G: ``width`` at 4×4 down to ``width/16`` at 64×64; Mimicry uses 1024), so it must be a multiple of 16.

Conditional variants (Miyato & Koyama 2018): :class:`ConditionalResNetGenerator` gives every block's
BatchNorm a per-class gain and bias (the final BatchNorm stays plain, as in their code);
:class:`ResNetProjectionDiscriminator` adds ``<embed(y), phi(x)>`` to the logit, ``phi`` the pooled
features, with spectral norm on the embedding. ``attention`` (SAGAN, Zhang et al. 2019) inserts a
:class:`~alttrain.models.resnet_blocks.SelfAttention` block after the first block whose output
feature map has that side, 8 or more (G: 8, 16, 32 and at 64 also 64; D: 16, 8 and at 64 also 32).

Parameter names, for param-group patterns (spectrally normalised weights read
``<module>.parametrizations.weight.original``: ``blocks.1.*`` and ``head.*`` match them, ``*.weight`` does not)::

    generator (both variants)
    stem.weight, stem.bias                      linear z -> 4×4 map
    blocks.{i}.{norm1,conv1,norm2,conv2,shortcut}.*   i = 0 .. 2 (32) | 0 .. 3 (64), each doubles the side
      norm*: weight, bias; conditional: gain.weight, bias.weight (per-class tables)
    attention.gamma, attention.{theta,phi,g,out}.*   (attention set; spectrally normalised)
    norm.weight, norm.bias, to_image.weight, to_image.bias   final BN-ReLU-conv3×3 (tanh follows)

    discriminator (both variants; every weight spectrally normalised)
    blocks.{i}.{conv1,conv2,shortcut}.*         i = 0 .. 3 (32) | 0 .. 4 (64); no shortcut where a block
                                                keeps the shape (blocks 2 and 3 at 32)
    attention.gamma, attention.{theta,phi,g,out}.*   (attention set)
    head.*                                      pooled features -> one logit
    embed.*                                     projection only: the class embedding
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm

from alttrain.checks import is_int
from alttrain.errors import ConfigError
from alttrain.models.dcgan import _check_input, _positive_int
from alttrain.models.resnet_blocks import (
    DownBlock,
    SelfAttention,
    UpBlock,
    conv,
    xavier,
)

IMAGE_SIZES = (32, 64)
# The side of the feature map each discriminator block outputs.
D_SIDES = {32: [16, 8, 8, 8], 64: [32, 16, 8, 4, 2]}
# Attention needs a map of side >= 8: its keys are max-pooled 2×2, and a 4×4 map leaves 4 positions to attend to.
MIN_ATTENTION_SIDE = 8


def _image_size(owner: str, image_size: object) -> int:
    if not is_int(image_size) or image_size not in IMAGE_SIZES:
        raise ConfigError(f"{owner}: image_size must be 32 or 64, got {image_size!r}")
    return int(image_size)


def _widths(owner: str, image_size: int, width: object) -> list[int]:
    """Channel counts from the deep end outwards: ``width`` 4 times at 32, ``width / 2^k`` (k = 0..4) at 64."""
    width = _positive_int(owner, "width", width)
    if image_size == 32:
        return [width] * 4
    if width % 16:
        raise ConfigError(f"{owner}: width must be a multiple of 16 at image_size 64 (the blocks halve it four "
                          f"times), got {width}")
    return [width >> k for k in range(5)]


def _attention_after(owner: str, attention: object, sides: list[int]) -> int | None:
    """Index of the first block whose output has side ``attention`` (None: no attention)."""
    if attention is None:
        return None
    allowed = sorted({side for side in sides if side >= MIN_ATTENTION_SIDE})
    if not is_int(attention) or attention not in allowed:
        raise ConfigError(f"{owner}: attention must be null or the side of a feature map its blocks output "
                          f"({', '.join(map(str, allowed))}), got {attention!r}")
    return sides.index(attention)


class _ResNetGeneratorBase(nn.Module):
    """The generator of both variants; ``num_classes`` (not None) makes the blocks' BatchNorms conditional."""

    def __init__(self, latent_dim: int, image_size: int, channels: int, width: int, attention: int | None,
                 num_classes: int | None):
        super().__init__()
        owner = type(self).__name__
        self.latent_dim = _positive_int(owner, "latent_dim", latent_dim)
        self.channels = _positive_int(owner, "channels", channels)
        self.image_size = _image_size(owner, image_size)
        widths = _widths(owner, self.image_size, width)
        self._attend_after = _attention_after(owner, attention, [8 * 2 ** i for i in range(len(widths) - 1)])
        self.stem = xavier(nn.Linear(latent_dim, 16 * widths[0]))
        self.blocks = nn.ModuleList(UpBlock(a, b, num_classes) for a, b in zip(widths[:-1], widths[1:]))
        self.attention = None if self._attend_after is None else SelfAttention(widths[self._attend_after + 1])
        self.norm = nn.BatchNorm2d(widths[-1])
        self.to_image = conv(widths[-1], channels, 3)

    def _generate(self, z: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        _check_input(type(self).__name__, z, (self.latent_dim,), "sample z with the model's latent_dim")
        h = self.stem(z).view(z.shape[0], -1, 4, 4)
        for i, block in enumerate(self.blocks):
            h = block(h, labels)
            if i == self._attend_after:
                h = self.attention(h)
        return torch.tanh(self.to_image(F.relu(self.norm(h))))


class ResNetGenerator(_ResNetGeneratorBase):
    """Maps ``z`` of shape ``(B, latent_dim)`` to images ``(B, channels, image_size, image_size)`` in [-1, 1]."""

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 3, width: int = 256,
                 attention: int | None = None):
        super().__init__(latent_dim, image_size, channels, width, attention, None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._generate(z, None)


class ConditionalResNetGenerator(_ResNetGeneratorBase):
    """Maps ``z`` ``(B, latent_dim)`` and int64 ``labels`` ``(B,)`` to images, with conditional BatchNorm."""

    def __init__(self, latent_dim: int = 128, image_size: int = 32, channels: int = 3, width: int = 256,
                 num_classes: int = 10, attention: int | None = None):
        num_classes = _positive_int(type(self).__name__, "num_classes", num_classes)
        super().__init__(latent_dim, image_size, channels, width, attention, num_classes)
        self.num_classes = num_classes

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._generate(z, labels)


def _spectral_norm_all(module: nn.Module) -> None:
    """Spectral norm on every convolution, linear layer and embedding not yet normalised (attention is)."""
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    for layer in layers:  # listed first: spectral_norm adds submodules, which must not join the walk
        if not parametrize.is_parametrized(layer, "weight"):
            spectral_norm(layer)


class ResNetDiscriminator(nn.Module):
    """Maps images ``(B, channels, image_size, image_size)`` to real-vs-fake logits of shape ``(B,)``."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 128, attention: int | None = None):
        super().__init__()
        owner = type(self).__name__
        self.channels = _positive_int(owner, "channels", channels)
        self.image_size = _image_size(owner, image_size)
        outs = _widths(owner, self.image_size, width)[::-1]
        sides = D_SIDES[self.image_size]
        self._attend_after = _attention_after(owner, attention, sides)
        ins, before = [channels] + outs[:-1], [self.image_size] + sides[:-1]
        self.blocks = nn.ModuleList(DownBlock(a, b, down=side < prev, first=i == 0)
                                    for i, (a, b, side, prev) in enumerate(zip(ins, outs, sides, before)))
        self.attention = None if self._attend_after is None else SelfAttention(outs[self._attend_after])
        self.head = xavier(nn.Linear(outs[-1], 1))
        _spectral_norm_all(self)  # after the initialisation: afterwards `.weight` is computed, not stored

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled features ``phi(x)`` before ``head``: ``(B, width)``, a sum of ReLU(h) over positions."""
        _check_input(type(self).__name__, x, (self.channels, self.image_size, self.image_size),
                     "set the model's image_size and channels to match the data")
        h = x
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self._attend_after:
                h = self.attention(h)
        return F.relu(h).sum(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()


class ResNetProjectionDiscriminator(ResNetDiscriminator):
    """The ResNet discriminator with a projection term: images and int64 ``labels`` ``(B,)`` -> logits ``(B,)``."""

    def __init__(self, image_size: int = 32, channels: int = 3, width: int = 128, num_classes: int = 10,
                 attention: int | None = None):
        super().__init__(image_size, channels, width, attention)
        self.num_classes = _positive_int(type(self).__name__, "num_classes", num_classes)
        self.embed = spectral_norm(xavier(nn.Embedding(num_classes, self.head.in_features)))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        phi = self.features(x)
        # Miyato & Koyama: logit = head(phi) + <embed(y), phi>.
        return self.head(phi).flatten() + (self.embed(labels) * phi).sum(dim=1)
