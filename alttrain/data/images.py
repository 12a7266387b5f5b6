"""Image data sets held in memory: ``digits`` (ships with scikit-learn), ``mnist``, ``cifar10``.

Each is loaded once into a tensor; MNIST and CIFAR-10 stay uint8 (47 MB / 150 MB) and are
converted to float in [-1, 1] per batch. Nothing downloads unless ``download=true`` is passed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from alttrain.data.source import IndexedSource, check_int, check_root
from alttrain.data.subset import check_subset
from alttrain.errors import DataError


def resize(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear, antialiased resize of float (N, C, H, W) images to ``image_size`` squared."""
    if images.shape[-2:] == (image_size, image_size):
        return images
    out = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                        antialias=True, align_corners=False)
    # Weights sum to one, yet float rounding can step a hair past the ends of [-1, 1].
    return out.clamp_(-1.0, 1.0)


class TensorImages:
    """``fetch`` for in-memory images: indexes (N, C, H, W) data and returns float batches.

    uint8 data are mapped 0..255 -> [-1, 1] and resized per batch; float data are returned as
    stored (already scaled and resized).
    """

    def __init__(self, data: torch.Tensor, image_size: int):
        self.data, self.image_size = data, image_size

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        batch = self.data[indices]
        if batch.dtype == torch.uint8:
            # x / 127.5 - 1 sends 0 -> -1 and 255 -> 1 exactly.
            batch = resize(batch.float() / 127.5 - 1.0, self.image_size)
        return batch


def _image_source(name: str, data: torch.Tensor, labels: torch.Tensor, image_size: int,
                  batch_size: int, subset: float) -> IndexedSource:
    return IndexedSource(
        name=name, kind="images", sample_shape=(data.shape[1], image_size, image_size),
        batch_size=batch_size, num_classes=10, labels=labels, size=len(data),
        fetch=TensorImages(data, image_size), subset=subset,
    )


@functools.lru_cache(maxsize=4)
def _digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Read the CSV that sklearn.datasets.load_digits reads, without importing scikit-learn
    # (its import alone costs about a second).
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("digits needs scikit-learn, which is not installed: "
                        "pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if path.is_file():
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        pixels, targets = table[:, :-1], table[:, -1]
    else:  # a future layout: fall back on the public loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pixels, targets = bunch.data.astype(np.float32), bunch.target
    images = torch.from_numpy(pixels).reshape(-1, 1, 8, 8) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    return resize(images, image_size), torch.from_numpy(np.asarray(targets)).long()


def digits(batch_size: int = 64, image_size: int = 32, root=None, subset: float = 1.0) -> IndexedSource:
    """The 1797 8x8 handwritten digits shipped with scikit-learn, resized once to ``image_size``.

    ``root`` is accepted (and ignored) so that every image data config has the same keys.
    ``subset``: train on that fraction of each class (:mod:`alttrain.data.subset`).
    """
    check_int("data.batch_size", batch_size, 1)
    check_int("data.image_size", image_size, 1)
    images, labels = _digits_tensors(image_size)
    return _image_source("digits", images, labels, image_size, batch_size, subset)


def _load_torchvision(cls, name: str, root: str, expected: str, train: bool, download: bool):
    """Instantiate a torchvision data set, turning its failures into one-line :class:`DataError`."""
    if not download and not os.path.exists(expected):
        raise DataError(f"{name} not found under {root} (expected {expected}): put the files "
                        f"there or pass data.download=true")
    try:
        return cls(root, train=train, download=download)
    except (RuntimeError, OSError, ValueError, AssertionError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        action = "download" if download else "read"
        raise DataError(f"could not {action} {name} under {root}: {first}; delete the folder "
                        f"and download again") from err


def mnist(root, batch_size: int = 64, image_size: int = 32, download: bool = False,
          train: bool = True, subset: float = 1.0) -> IndexedSource:
    """MNIST from ``root``/MNIST/raw (torchvision layout), 1 channel, 28 or 32 pixels (bilinear)."""
    root = check_root(root, "MNIST")
    check_subset("data.subset", subset)
    check_int("data.batch_size", batch_size, 1)
    check_int("data.image_size", image_size, 1)
    from torchvision.datasets import MNIST

    # torchvision insists on all four raw files, whichever split is asked for.
    raw = [os.path.join(root, "MNIST", "raw", f"{split}-{kind}")
           for split in ("train", "t10k") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    expected = next((path for path in raw if not os.path.exists(path)), raw[0])
    dataset = _load_torchvision(MNIST, "MNIST", root, expected, train, download)
    data = dataset.data.unsqueeze(1).contiguous()  # (N, 28, 28) uint8 -> (N, 1, 28, 28)
    return _image_source("mnist", data, dataset.targets.long(), image_size, batch_size, subset)


def cifar10(root, batch_size: int = 64, image_size: int = 32, download: bool = False,
            train: bool = True, subset: float = 1.0) -> IndexedSource:
    """CIFAR-10 from ``root``/cifar-10-batches-py (torchvision layout), 3 channels."""
    root = check_root(root, "CIFAR-10")
    check_subset("data.subset", subset)
    check_int("data.batch_size", batch_size, 1)
    check_int("data.image_size", image_size, 1)
    from torchvision.datasets import CIFAR10

    expected = os.path.join(root, "cifar-10-batches-py")
    dataset = _load_torchvision(CIFAR10, "CIFAR-10", root, expected, train, download)
    data = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
    return _image_source("cifar10", data, torch.tensor(dataset.targets), image_size, batch_size, subset)
