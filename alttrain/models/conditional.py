"""Class-conditional DCGANs: a generator with conditional BatchNorm, a projection and an ACGAN discriminator.

* :class:`ConditionalDCGANGenerator`: the DCGAN generator whose BatchNorm layers take their scale and
  shift from the class (conditional BatchNorm, de Vries et al. 2017; SNGAN, BigGAN), and whose stem
  also sees a class embedding concatenated to ``z``.
* :class:`ProjectionDiscriminator`: the DCGAN discriminator plus the projection term of Miyato &
  Koyama (2018): ``D(x, y) = head(h(x)) + <embed(y), sum_pool(h(x))>``.
* :class:`ACGANDiscriminator`: the DCGAN discriminator with an auxiliary classifier (Odena et al.
  2017): it takes no labels and returns ``(logit, class_logits)``; the ACGAN loss terms
  (:mod:`alttrain.games.conditional`) train the classifier.

Conditional networks take ``labels`` as a ``forward`` parameter of that name, which is how alttrain
knows to pass them. Parameter names, for param-group patterns::

    ConditionalDCGANGenerator                 ProjectionDiscriminator / ACGANDiscriminator
    embed.weight          class -> stem input  blocks.{i}.conv.*, blocks.{i}.norm.*, head.*  (as DCGAN)
    stem.conv.weight, stem.norm.{gain,bias}.weight (per-class scale and shift tables)
    blocks.{i}.conv.weight, blocks.{i}.norm.{gain,bias}.weight
    to_image.weight, to_image.bias            embed.weight (projection) | classifier.weight/bias (ACGAN)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from alttrain.models.dcgan import (
    DCGANDiscriminator,
    _check_input,
    _dcgan_init,
    _doublings,
    _positive_int,
)


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine part; the scale and shift are looked up per class."""

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.normal_(self.gain.weight, 1.0, 0.02)  # DCGAN's BatchNorm initialisation, per class
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class _CondBlock(nn.Module):
    def __init__(self, conv: nn.Module, out_ch: int, num_classes: int):
        super().__init__()
        self.conv, self.norm, self.act = conv, ConditionalBatchNorm2d(out_ch, num_classes), nn.ReLU()

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x), labels))


class ConditionalDCGANGenerator(nn.Module):
    """Maps ``z`` ``(B, latent_dim)`` and ``labels`` ``(B,)`` to images ``(B, channels, image_size, image_size)``.

    The DCGAN generator (:class:`~alttrain.models.dcgan.DCGANGenerator`) with conditional BatchNorm
    after every transposed convolution but the last, and ``z`` concatenated with a learned
    ``embed_dim``-wide class embedding at the stem.
    """

    def __init__(self, latent_dim: int = 64, image_size: int = 32, channels: int = 1, base_width: int = 16,
                 num_classes: int = 10, embed_dim: int = 16):
        super().__init__()
        owner = type(self).__name__
        self.latent_dim = _positive_int(owner, "latent_dim", latent_dim)
        self.channels = _positive_int(owner, "channels", channels)
        self.num_classes = _positive_int(owner, "num_classes", num_classes)
        _positive_int(owner, "base_width", base_width)
        _positive_int(owner, "embed_dim", embed_dim)
        self.image_size = image_size
        n = _doublings(owner, image_size)
        width = base_width * 2 ** (n - 1)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.stem = _CondBlock(nn.ConvTranspose2d(latent_dim + embed_dim, width, 4, 1, 0, bias=False), width,
                               num_classes)
        blocks = []
        for _ in range(n - 1):
            blocks.append(_CondBlock(nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), width // 2,
                                     num_classes))
            width //= 2
        self.blocks = nn.ModuleList(blocks)
        self.to_image = nn.ConvTranspose2d(width, channels, 4, 2, 1)
        _dcgan_init(self)
        nn.init.normal_(self.embed.weight, 0.0, 1.0)  # on the scale of z

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, z, (self.latent_dim,), "sample z with the model's latent_dim")
        h = torch.cat([z, self.embed(labels)], dim=1)[:, :, None, None]
        h = self.stem(h, labels)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.to_image(h))


class ProjectionDiscriminator(DCGANDiscriminator):
    """The DCGAN discriminator with a projection term: ``(B, C, S, S)`` images and ``(B,)`` labels -> ``(B,)``.

    ``norm="spectral"`` (the default here, as in Miyato & Koyama) also normalises the class embedding.
    """

    def __init__(self, image_size: int = 32, channels: int = 1, base_width: int = 16, num_classes: int = 10,
                 norm: str = "spectral"):
        super().__init__(image_size, channels, base_width, norm)
        self.num_classes = _positive_int(type(self).__name__, "num_classes", num_classes)
        self.embed = nn.Embedding(num_classes, self.head.in_channels)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if norm == "spectral":
            spectral_norm(self.embed)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        # <embed(y), phi(x)> with phi the sum over the last feature map's positions.
        return self.head(h).flatten() + (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)


class ACGANDiscriminator(DCGANDiscriminator):
    """The DCGAN discriminator with an auxiliary classifier: images -> ``(logit (B,), class_logits (B, K))``."""

    def __init__(self, image_size: int = 32, channels: int = 1, base_width: int = 16, num_classes: int = 10,
                 norm: str = "batch"):
        super().__init__(image_size, channels, base_width, norm)
        self.num_classes = _positive_int(type(self).__name__, "num_classes", num_classes)
        self.classifier = nn.Linear(self.head.in_channels, num_classes)
        if norm == "spectral":
            spectral_norm(self.classifier)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.head(h).flatten(), self.classifier(h.sum(dim=(2, 3)))
