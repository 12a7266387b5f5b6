"""``image_folder``: any folder of images in torchvision's ImageFolder layout, read per item.

Images are decoded on demand (nothing is preloaded), converted to the requested channel count,
resized so the shorter side is ``image_size``, center-cropped square and scaled to [-1, 1].
"""

from __future__ import annotations

import os

import torch

from alttrain.data.source import IndexedSource, check_int, check_root
from alttrain.errors import ConfigError, DataError

_MODES = {1: "L", 3: "RGB"}  # PIL mode for each allowed channel count


class FolderImages:
    """``fetch`` for an ImageFolder: decodes, resizes and crops the requested items."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int, channels: int):
        self.paths = [path for path, _ in samples]
        self.image_size, self.mode = image_size, _MODES[channels]

    def load(self, index: int) -> torch.Tensor:
        """Item ``index`` as a float (C, S, S) tensor in [-1, 1]."""
        from PIL import Image
        from torchvision.transforms import functional as TF

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                img = img.convert(self.mode)
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError too
            raise DataError(f"cannot read image {path} ({err}): remove or replace it") from err
        img = TF.center_crop(TF.resize(img, self.image_size, antialias=True), [self.image_size] * 2)
        return TF.pil_to_tensor(img).float() / 127.5 - 1.0  # 0 -> -1 and 255 -> 1 exactly

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.load(i) for i in indices.tolist()])


def image_folder(root, batch_size: int = 64, image_size: int = 64,
                 channels: int = 3) -> IndexedSource:
    """Images under ``root``/<class>/*.png|jpg|... (torchvision ImageFolder layout).

    A single class folder (``root/all/``) is enough; class indices are not used as labels.
    """
    root = check_root(root, "the image class folders")
    check_int("data.batch_size", batch_size, 1)
    check_int("data.image_size", image_size, 1)
    if channels not in _MODES:
        raise ConfigError(f"data.channels must be 1 or 3, got {channels!r}")
    if not os.path.isdir(root):
        raise DataError(f"image folder {root} does not exist: set data.root to a folder of "
                        f"class subfolders holding images")
    from torchvision.datasets import ImageFolder

    try:
        # allow_empty: a stray empty class folder is harmless; an empty data set is caught below.
        samples = ImageFolder(root, allow_empty=True).samples
    except FileNotFoundError as err:  # raised when root has no class subfolder
        raise DataError(f"no class subfolders under {root}: put the images in a subfolder "
                        f"such as {os.path.join(root, 'all')}") from err
    if not samples:
        raise DataError(f"no images (.png, .jpg, ...) in the class subfolders of {root}: "
                        f"add images or fix data.root")
    return IndexedSource(
        name="image_folder", kind="images", sample_shape=(channels, image_size, image_size),
        batch_size=batch_size, size=len(samples),
        fetch=FolderImages(samples, image_size, channels),
    )
