"""Differentiable image ops the augmentations share, and the random stream they draw from.

Every op takes ``(N, C, H, W)`` images and per-sample parameters, and is built from ``gather``,
``where`` and arithmetic, so gradients (and the second derivatives an R1 penalty takes) flow
through to whatever made the images. Integer moves (shifts, flips) gather source pixels: exact,
no interpolation. Per-image choices are made on ``(N, H)`` / ``(N, W)`` maps and broadcast, so the
full-size work is a gather or a ``where`` or two.
"""

from __future__ import annotations

import torch

from alttrain.scale.rng import derive_seed

SALT_AUGMENT = 0x6175


class RandomStream:
    """The augmentation's own random numbers, never the global RNG's.

    Call ``i`` of the stream draws from a generator seeded with ``derive_seed(seed, rank, i)``, so
    the whole state is the call counter: it is the same number on every rank (each rank still
    draws its own numbers), and restoring it resumes the stream exactly.
    """

    def __init__(self, seed: int, rank: int = 0, device: torch.device | str = "cpu"):
        self.base = derive_seed(seed, SALT_AUGMENT, rank)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.calls = 0

    def next(self) -> torch.Generator:
        """The generator for the next call, freshly seeded (a host-side operation: no device sync)."""
        self.generator.manual_seed(derive_seed(self.base, self.calls))
        self.calls += 1
        return self.generator

    def uniform(self, g: torch.Generator, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """``(n,)`` draws from U[low, high)."""
        return torch.rand(n, generator=g, device=self.device) * (high - low) + low

    def normal(self, g: torch.Generator, n: int, std: float) -> torch.Tensor:
        return torch.randn(n, generator=g, device=self.device) * std

    def integers(self, g: torch.Generator, n: int, low: int, high: int) -> torch.Tensor:
        """``(n,)`` integers in [low, high] (both ends included)."""
        return torch.randint(low, high + 1, (n,), generator=g, device=self.device)


def per_sample(values: torch.Tensor) -> torch.Tensor:
    """``(N,)`` -> ``(N, 1, 1, 1)``, to broadcast one value per image."""
    return values.reshape(-1, 1, 1, 1)


def positions(n: int, size: int, device: torch.device) -> torch.Tensor:
    """``(n, size)``: 0, 1, ..., size - 1 for each image (a row or column index)."""
    return torch.arange(size, device=device).expand(n, size)


def move_pixels(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[n, c, i, j] = x[n, c, rows[n, i], cols[n, j]]``: any per-image shift or flip, as two gathers.

    Moves that act on rows and columns separately need only ``(N, H)`` and ``(N, W)`` index maps,
    not one index per pixel. Indices must be in range.
    """
    n, c, h, w = x.shape
    x = x.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, w))
    return x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))


def reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Fold any integer index into [0, size) by mirroring at the edges (no edge pixel repeated)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    folded = index.remainder(period)
    return torch.where(folded >= size, period - folded, folded)


def translate_zero(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Move each image's content by ``(dy[n], dx[n])`` whole pixels; pixels shifted in are 0."""
    n, _, h, w = x.shape
    rows = positions(n, h, x.device) - dy.view(-1, 1)
    cols = positions(n, w, x.device) - dx.view(-1, 1)
    inside = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    moved = move_pixels(x, rows.clamp(0, h - 1), cols.clamp(0, w - 1))
    return torch.where(inside, moved, torch.zeros((), dtype=x.dtype, device=x.device))


def cutout(x: torch.Tensor, size_h: int, size_w: int, top: torch.Tensor, left: torch.Tensor,
           apply: torch.Tensor | None = None) -> torch.Tensor:
    """Zero a ``size_h x size_w`` rectangle at ``(top[n], left[n])`` (it may hang over the edge),
    in the images where ``apply`` is true (all when ``None``)."""
    n, _, h, w = x.shape
    rows, cols = positions(n, h, x.device), positions(n, w, x.device)
    in_rows = (rows >= top.view(-1, 1)) & (rows < top.view(-1, 1) + size_h)
    in_cols = (cols >= left.view(-1, 1)) & (cols < left.view(-1, 1) + size_w)
    if apply is not None:
        in_rows = in_rows & apply.view(-1, 1)
    drop = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w)
    return torch.where(drop, torch.zeros((), dtype=x.dtype, device=x.device), x)


def cutout_corners(stream: RandomStream, g: torch.Generator, n: int, side: int, size: int) -> torch.Tensor:
    """Top edges of ``size``-pixel squares centred uniformly on the image, as DiffAugment draws them:
    the centre is one of ``side + 1 - size % 2`` positions, so squares may be cut off by the edge."""
    centre = stream.integers(g, n, 0, side - size % 2)
    return centre - size // 2


def fraction_of(side: int, fraction: float) -> int:
    """``fraction`` of ``side`` pixels, rounded half up (DiffAugment's ``int(side * ratio + 0.5)``)."""
    return int(side * fraction + 0.5)
