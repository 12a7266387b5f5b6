"""DCGAN generator and discriminator (Radford et al. 2016) for square images of side 8·2^k.

Both networks work on a 4×4 base map and change resolution by 2 per block with 4×4 stride-2
convolutions, so ``image_size`` must be a power of two >= 8; with ``n = log2(image_size / 4)``
doublings the widths are ``base_width · 2^j`` (widest at 4×4), exactly as in pytorch/examples for
64×64. Weights start from N(0, 0.02), BatchNorm scales from N(1, 0.02), biases at 0 (the paper's
initialisation). Convolutions followed by BatchNorm have no bias: BatchNorm's shift replaces it.

The default ``base_width=16`` (widths 16/32/64 at 32×32) is sized for small grey-scale data such as
digits on a CPU: an alternating D+G step at batch 64 takes about 50 ms on 2 cores, against about
115 ms at 32 and 300+ ms at 64, the paper's width, meant for 64×64 colour images on a GPU.

Parameter names (what param-group patterns match)::

    DCGANGenerator                             DCGANDiscriminator
    stem.conv.weight      z -> 4×4 map         blocks.{i}.conv.weight  i = 0 .. n-1, halves the side
    stem.norm.weight/bias (norm="batch")       blocks.{i}.conv.bias    (no BatchNorm after it)
    stem.conv.bias        (norm="none")        blocks.{i}.norm.weight/bias (norm="batch", i >= 1)
    blocks.{i}.conv.weight  i = 0 .. n-2       head.weight, head.bias  4×4 map -> one logit
    blocks.{i}.norm.weight/bias | .conv.bias
    to_image.weight, to_image.bias             (tanh follows to_image)

At ``image_size=8`` the generator has no ``blocks`` (stem and to_image do the one doubling) and
the discriminator's only block is its input block, which carries no BatchNorm (the paper leaves
the input layer unnormalised). Under ``norm="spectral"`` every weight of the discriminator is
reparametrised, so its name becomes ``<module>.parametrizations.weight.original`` (the module
prefix is unchanged: ``blocks.1.*`` and ``head.*`` still match, ``*.weight`` does not).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from alttrain.checks import check_int, is_int
from alttrain.errors import ConfigError

G_NORMS = ("batch", "none")
D_NORMS = ("batch", "spectral", "none")


def _positive_int(owner: str, name: str, value: object) -> int:
    return check_int(f"{owner}: {name}", value, 1)


def _doublings(owner: str, image_size: object) -> int:
    """Number of ×2 resolution steps between the 4×4 base map and ``image_size``."""
    if not is_int(image_size) or image_size < 8 or image_size & (image_size - 1):
        raise ConfigError(f"{owner}: image_size must be 8·2^k (8, 16, 32, 64, ...), got {image_size!r}")
    return image_size.bit_length() - 3  # 8 -> 1, 16 -> 2, 32 -> 3


def _check_norm(owner: str, norm: object, allowed: tuple[str, ...]) -> str:
    if norm not in allowed:
        raise ConfigError(f"{owner}: norm must be one of {', '.join(allowed)}, got {norm!r}")
    return norm


def _block(conv: nn.Module, out_ch: int, batch_norm: bool, act: nn.Module) -> nn.Sequential:
    layers = OrderedDict(conv=conv)
    if batch_norm:
        layers["norm"] = nn.BatchNorm2d(out_ch)
    layers["act"] = act
    return nn.Sequential(layers)


def _dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv weights, N(1, 0.02) BatchNorm scales, zero biases (DCGAN paper, §4)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:  # conditional BatchNorm keeps its affine part elsewhere
            nn.init.normal_(m.weight, 1.0, 0.02)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _check_input(owner: str, x: torch.Tensor, expected: tuple[int, ...], fix: str) -> None:
    # A 64×64 batch through a 32×32 discriminator would otherwise flatten a 5×5 logit map into
    # 25·B "logits" and train on garbage without any error.
    if tuple(x.shape[1:]) != expected:
        shown = ", ".join(str(d) for d in expected)
        raise ConfigError(f"{owner} expects input of shape (B, {shown}), got {tuple(x.shape)}; {fix}")


class DCGANGenerator(nn.Module):
    """Maps ``z`` of shape ``(B, latent_dim)`` to images ``(B, channels, image_size, image_size)`` in [-1, 1].

    ``stem`` projects z to a ``base_width·2^(n-1)``-channel 4×4 map (a 4×4 transposed convolution
    of the 1×1 input, i.e. the paper's "project and reshape"), each ``blocks.{i}`` doubles the side
    and halves the width, ``to_image`` doubles the side to ``image_size`` and emits ``channels``,
    then tanh. ``norm`` is ``"batch"`` (BatchNorm + ReLU, the paper) or ``"none"`` (ReLU only).
    """

    def __init__(self, latent_dim: int = 64, image_size: int = 32, channels: int = 1,
                 base_width: int = 16, norm: str = "batch"):
        super().__init__()
        owner = type(self).__name__
        self.latent_dim = _positive_int(owner, "latent_dim", latent_dim)
        self.channels = _positive_int(owner, "channels", channels)
        self.image_size = image_size
        n = _doublings(owner, image_size)
        _positive_int(owner, "base_width", base_width)
        bn = _check_norm(owner, norm, G_NORMS) == "batch"

        width = base_width * 2 ** (n - 1)
        self.stem = _block(nn.ConvTranspose2d(latent_dim, width, 4, 1, 0, bias=not bn), width, bn, nn.ReLU())
        blocks = []
        for _ in range(n - 1):
            conv = nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=not bn)
            blocks.append(_block(conv, width // 2, bn, nn.ReLU()))
            width //= 2
        self.blocks = nn.ModuleList(blocks)
        self.to_image = nn.ConvTranspose2d(width, channels, 4, 2, 1)
        _dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _check_input(type(self).__name__, z, (self.latent_dim,), "sample z with the model's latent_dim")
        h = self.stem(z[:, :, None, None])
        for block in self.blocks:
            h = block(h)
        return torch.tanh(self.to_image(h))


class DCGANDiscriminator(nn.Module):
    """Maps images ``(B, channels, image_size, image_size)`` to real-vs-fake logits of shape ``(B,)``.

    Each ``blocks.{i}`` is a 4×4 stride-2 convolution (width ``base_width·2^i``) and LeakyReLU(0.2)
    down to 4×4; ``head`` is a 4×4 convolution to one logit. ``norm``: ``"batch"`` puts BatchNorm in
    every block but the first (the paper), ``"spectral"`` spectrally normalises every weight
    including the head's (Miyato et al. 2018), ``"none"`` uses neither (the usual choice with a
    gradient penalty, which BatchNorm invalidates by mixing samples).
    """

    def __init__(self, image_size: int = 32, channels: int = 1, base_width: int = 16, norm: str = "batch"):
        super().__init__()
        owner = type(self).__name__
        self.channels = _positive_int(owner, "channels", channels)
        self.image_size = image_size
        n = _doublings(owner, image_size)
        _positive_int(owner, "base_width", base_width)
        norm = _check_norm(owner, norm, D_NORMS)

        blocks, in_ch = [], channels
        for i in range(n):
            out_ch = base_width * 2 ** i
            bn = norm == "batch" and i > 0
            conv = nn.Conv2d(in_ch, out_ch, 4, 2, 1, bias=not bn)
            # In place, as in pytorch/examples' DCGAN (nothing else reads the conv's or BatchNorm's output):
            # the compiled backward then takes the sign from the saved activation instead of a saved
            # boolean mask, which inductor's CPU kernels store slowly (alttrain/scale/compile.py).
            blocks.append(_block(conv, out_ch, bn, nn.LeakyReLU(0.2, inplace=True)))
            in_ch = out_ch
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(in_ch, 1, 4, 1, 0)
        _dcgan_init(self)  # before spectral_norm: afterwards `.weight` is computed, not stored
        if norm == "spectral":
            for block in self.blocks:
                spectral_norm(block.conv)
            spectral_norm(self.head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last 4×4 feature map, before ``head``: ``(B, base_width·2^(n-1), 4, 4)``."""
        _check_input(type(self).__name__, x, (self.channels, self.image_size, self.image_size),
                     "set the model's image_size and channels to match the data")
        h = x
        for block in self.blocks:
            h = block(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten()
