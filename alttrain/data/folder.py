"""``image_folder``: any folder of images in torchvision's ImageFolder layout, read per item.

Images are decoded on demand (nothing is preloaded), in ``num_workers`` DataLoader worker processes
(:mod:`alttrain.data.pipeline`), converted to the requested channel count, resized so the shorter
side is ``image_size``, center-cropped square, optionally flipped and scaled to [-1, 1]. The folder
is scanned with a symlink-loop guard (:mod:`alttrain.data.scan`) and, with ``verify``, every
file's header is checked before the first batch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch.utils.data import default_collate

from alttrain.checks import check_bool
from alttrain.data.decoded import DecodedSource, ItemReader, as_list, check_pipeline
from alttrain.data.scan import (
    PathTable,
    check_verify,
    replace_hint,
    scan_folder,
    verify_headers,
)
from alttrain.data.source import check_int, check_root
from alttrain.engine.batch import Batch
from alttrain.errors import ConfigError, DataError
from alttrain.scale.rng import derive_seed

_MODES = {1: "L", 3: "RGB"}  # PIL mode for each allowed channel count
SALT_FLIP = 0x666c


class FolderImages(ItemReader):
    """Reads images by index: decode, resize, crop, scale; flips drawn per ``(seed, epoch, index)``."""

    def __init__(self, paths: PathTable, labels: torch.Tensor, image_size: int, channels: int, flip: bool = False):
        self.paths, self.labels, self.flip = paths, labels, flip
        self.image_size, self.mode = image_size, _MODES[channels]

    def load(self, index: int, flip: bool = False) -> torch.Tensor:
        """Item ``index`` as a float (C, S, S) tensor in [-1, 1], mirrored left-right if ``flip``."""
        from PIL import Image
        from torchvision.transforms import functional as TF

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)  # decodes: a truncated file fails here, not at open
        except Exception as err:
            raise DataError(f"cannot read image {path} ({type(err).__name__}: {err}): {replace_hint()}") from None
        img = TF.center_crop(TF.resize(img, self.image_size, antialias=True), [self.image_size] * 2)
        tensor = TF.pil_to_tensor(img)
        if flip:
            tensor = tensor.flip(-1)
        return tensor.float().div_(127.5).sub_(1.0)  # 0 -> -1 and 255 -> 1 exactly; in place: no extra copies

    def flips(self, indices: list[int], seed: int, epoch: int) -> list[bool]:
        """Which items of this batch are mirrored: one bit of a hash of ``(seed, epoch, index)`` each."""
        return [self.flip and bool(derive_seed(seed, SALT_FLIP, epoch, i) & 1) for i in indices]

    def read(self, indices: torch.Tensor | Sequence[int], seed: int, epoch: int) -> Batch:
        idx = as_list(indices)
        # default_collate stacks straight into shared memory inside a worker: no copy on the way out.
        samples = default_collate([self.load(i, f) for i, f in zip(idx, self.flips(idx, seed, epoch))])
        return Batch(samples, self.labels[idx])

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.load(i) for i in as_list(indices)])


def image_folder(root, batch_size: int = 64, image_size: int = 64, channels: int = 3, flip: bool = False,
                 num_workers: int | str = "auto", prefetch: int = 2, timeout: float = 300.0,
                 verify: bool | str = "auto", subset: float = 1.0) -> DecodedSource:
    """Images under ``root``/<class>/*.png|jpg|... (torchvision ImageFolder layout).

    Each class subfolder is a label (in sorted order, as torchvision numbers them); a single class
    folder (``root/all/``) is enough for an unconditional run. ``flip``: a random horizontal flip
    per item. ``verify`` (``auto``, true, false): check every file's header when the first stream
    is made (``auto``: for sets of up to :data:`~alttrain.data.scan.VERIFY_AUTO_LIMIT` files).
    ``num_workers``, ``prefetch``, ``timeout``: :class:`~alttrain.data.pipeline.DecodedSource`;
    ``subset``: :mod:`alttrain.data.subset`.
    """
    root = check_root(root, "the image class folders")
    check_int("data.batch_size", batch_size, 1)
    check_int("data.image_size", image_size, 1)
    if channels not in _MODES:
        raise ConfigError(f"data.channels must be 1 or 3, got {channels!r}")
    check_bool("data.flip", flip)
    check_verify(verify)
    check_pipeline(num_workers, prefetch, timeout, subset)
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist: set data.root to a folder of "
                        f"class subfolders holding images")
    classes, paths, labels = scan_folder(root)
    if not paths:
        raise DataError(f"no images (.png, .jpg, ...) in the class subfolders of {root}: "
                        f"add images or fix data.root")
    table, labels = PathTable(paths), torch.tensor(labels, dtype=torch.int64)
    reader = FolderImages(table, labels, image_size, channels, flip)
    return DecodedSource(
        name="image_folder", kind="images", sample_shape=(channels, image_size, image_size),
        batch_size=batch_size, size=len(table), labels=labels, num_classes=len(classes), fetch=reader,
        reader=reader, num_workers=num_workers, prefetch=prefetch, timeout=timeout, subset=subset,
        check=functools.partial(verify_headers, table, root, verify),
    )
