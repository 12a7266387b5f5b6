"""Pictures of samples: image grids and 2-D scatter plots as ``uint8`` CHW tensors, and PNG files.

Pure functions with no plotting library: a tensor goes in, a tensor comes out, ready for
TensorBoard's ``add_image`` or :func:`save_png`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

Extent = tuple[float, float, float, float]  # (x_min, x_max, y_min, y_max) in data units

BACKGROUND = (255, 255, 255)
REFERENCE_COLOR = (200, 200, 200)   # light grey: the data the samples should cover
SAMPLE_COLOR = (214, 39, 40)        # red: what the generator made
CENTER_COLOR = (0, 0, 0)            # black crosses: the modes
FRAME_COLOR = (0, 0, 0)


def image_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile ``(N, C, H, W)`` images with values in ``[-1, 1]`` into one ``uint8`` ``(C', H', W')`` image.

    Values outside ``[-1, 1]`` are clamped. ``C'`` is 3 for 1- and 3-channel input (torchvision's
    ``make_grid`` repeats a single channel), so the result is always viewable as RGB.
    """
    if images.dim() != 4:
        raise ValueError(f"image_grid expects (N, C, H, W) images, got shape {tuple(images.shape)}")
    unit = (images.detach().float().cpu().clamp(-1, 1) + 1) / 2
    grid = make_grid(unit, nrow=nrow, padding=padding, pad_value=1.0)
    return grid.mul(255).round().to(torch.uint8)


def auto_extent(*point_sets: torch.Tensor | None, margin: float = 0.1) -> Extent:
    """A square frame around every given ``(N, 2)`` set, widened by ``margin`` of its span on each side.

    Square so that circles stay circles on a square canvas. Call it once and pass the result to
    every :func:`scatter_plot` of a run: a frame that follows the samples hides their drift.
    """
    points = [p.detach().float().cpu().reshape(-1, 2) for p in point_sets if p is not None and p.numel()]
    points = [p[torch.isfinite(p).all(dim=1)] for p in points]
    if not points or not sum(len(p) for p in points):
        return (-1.0, 1.0, -1.0, 1.0)
    allp = torch.cat(points)
    lo, hi = allp.min(dim=0).values, allp.max(dim=0).values
    center = (lo + hi) / 2
    half = float((hi - lo).max()) / 2 * (1 + 2 * margin)
    if half <= 0:  # a single point, or all points equal: any frame around it will do
        half = 1.0
    cx, cy = float(center[0]), float(center[1])
    return (cx - half, cx + half, cy - half, cy + half)


def to_pixels(points: torch.Tensor, extent: Extent, size: int) -> tuple[list[int], list[int]]:
    """Column and row of the pixel containing each point; ``y`` grows upwards as in a plot.

    Pixel ``i`` covers ``[i, i + 1)`` of the canvas, so the centre of the extent falls in pixel
    ``size // 2`` (the exact middle pixel when ``size`` is odd). Non-finite points are dropped.
    """
    points = points.detach().double().cpu().reshape(-1, 2)
    points = points[torch.isfinite(points).all(dim=1)]
    x_min, x_max, y_min, y_max = extent
    cols = torch.floor((points[:, 0] - x_min) / (x_max - x_min) * size)
    rows = torch.floor((y_max - points[:, 1]) / (y_max - y_min) * size)
    # A point exactly on the far edge belongs to the last pixel, not one past it.
    cols = torch.where(points[:, 0] == x_max, cols - 1, cols)
    rows = torch.where(points[:, 1] == y_min, rows - 1, rows)
    return cols.long().tolist(), rows.long().tolist()


def scatter_plot(samples: torch.Tensor, reference: torch.Tensor | None = None, centers: torch.Tensor | None = None,
                 size: int = 512, extent: Extent | None = None) -> torch.Tensor:
    """Draw ``(N, 2)`` samples over optional reference points and mode centres: ``uint8`` ``(3, size, size)``.

    ``extent`` defaults to :func:`auto_extent` of the reference and centres (of the samples when
    neither is given). Points outside the extent are not drawn.
    """
    if extent is None:
        extent = auto_extent(reference, centers) if reference is not None or centers is not None \
            else auto_extent(samples)
    if not (extent[1] > extent[0] and extent[3] > extent[2]):
        raise ValueError(f"scatter_plot extent must have x_min < x_max and y_min < y_max, got {extent}")
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    dot = max(1, size // 256)  # dot radius grows with the canvas so dots stay visible
    if reference is not None:
        _dots(draw, *to_pixels(reference, extent, size), radius=dot - 1 if dot > 1 else 0, color=REFERENCE_COLOR)
    _dots(draw, *to_pixels(samples, extent, size), radius=dot, color=SAMPLE_COLOR)
    if centers is not None:
        arm = 3 * dot + 1
        for c, r in zip(*to_pixels(centers, extent, size)):
            draw.line([(c - arm, r), (c + arm, r)], fill=CENTER_COLOR, width=dot)
            draw.line([(c, r - arm), (c, r + arm)], fill=CENTER_COLOR, width=dot)
    draw.rectangle([(0, 0), (size - 1, size - 1)], outline=FRAME_COLOR)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def _dots(draw: ImageDraw.ImageDraw, cols: list[int], rows: list[int], radius: int, color) -> None:
    if radius == 0:
        draw.point(list(zip(cols, rows)), fill=color)
        return
    for c, r in zip(cols, rows):
        draw.ellipse([(c - radius, r - radius), (c + radius, r + radius)], fill=color)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write a ``uint8`` CHW tensor (1, 3 or 4 channels) to ``path`` as PNG, creating parent folders.

    Written to a temporary name and renamed, so a viewer never opens a half-written file.
    """
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3, 4):
        raise ValueError(f"save_png expects a uint8 (C, H, W) tensor with C in 1, 3, 4; "
                         f"got {image.dtype} of shape {tuple(image.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hwc = image.detach().cpu().permute(1, 2, 0).numpy()
    pil = Image.fromarray(hwc[:, :, 0] if hwc.shape[2] == 1 else hwc)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pil.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def grid_rows(n: int) -> int:
    """Images per row for a near-square grid of ``n`` images."""
    return max(1, math.ceil(math.sqrt(n)))
