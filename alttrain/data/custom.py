"""``dataset``: any map-style ``torch.utils.data.Dataset`` a config names by ``_target_``.

Items are an image, or ``(image, label)``. An image is a ``(C, H, W)`` (or ``(H, W)``) float tensor
already in [-1, 1], or a uint8 tensor, NumPy array or PIL image, mapped 0..255 -> [-1, 1]. Every
item must have the shape of item 0, which sets the data's sample shape.

Random transforms inside the data set (torchvision's ``RandomHorizontalFlip``, ``random``,
NumPy's global RNG) draw from generators seeded per item from ``(seed, epoch, index)`` here, so the
batches are the same with any ``num_workers``, and a resumed run sees the batches it would have.
"""

from __future__ import annotations

import contextlib
import logging
import random
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alttrain.checks import check_int, is_int
from alttrain.data.decoded import DecodedSource, ItemReader, as_list, check_pipeline
from alttrain.engine.batch import Batch
from alttrain.errors import AltTrainError, ConfigError, DataError
from alttrain.scale.rng import derive_seed

log = logging.getLogger("alttrain")
SALT_ITEM = 0x6974
SALT_REFERENCE_ITEM = 0x7269  # items of the metric reference set: the same on every call and for every seed


@contextlib.contextmanager
def seeded_globals(seed: int):
    """Seed torch's CPU generator, ``random`` and NumPy's global RNG for the body, then restore them.

    Only the CPU generator: ``torch.manual_seed`` would also reseed CUDA's, which the training
    process draws its noise from.
    """
    saved = torch.default_generator.get_state(), random.getstate(), np.random.get_state()
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.default_generator.set_state(saved[0])
        random.setstate(saved[1])
        np.random.set_state(saved[2])


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    return f" at {frame.filename}:{frame.lineno}" if frame else ""


def as_image(value: Any, where: str) -> torch.Tensor:
    """An item's image as a float (C, H, W) tensor (0..255 data mapped to [-1, 1])."""
    if hasattr(value, "convert") and hasattr(value, "mode"):  # a PIL image
        from torchvision.transforms.functional import pil_to_tensor

        value = pil_to_tensor(value if value.mode in ("L", "RGB") else value.convert("RGB"))
    elif isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor) or value.ndim not in (2, 3):
        kind = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise DataError(f"{where} holds {kind}: items must be an image (a (C, H, W) tensor, a PIL image) or a "
                        f"pair (image, label)")
    image = value if value.ndim == 3 else value[None]
    return image.float() / 127.5 - 1.0 if image.dtype == torch.uint8 else image.float()


class DatasetItems(ItemReader):
    """Reads items of a user's ``Dataset`` as images (and labels), each with its own seeded RNGs."""

    def __init__(self, dataset: Any, name: str):
        self.dataset, self.name = dataset, name
        self.shape: tuple[int, ...] | None = None  # item 0's, once read
        self.labelled: bool | None = None

    def item(self, index: int, seed: int) -> tuple[torch.Tensor, int | None]:
        where = f"{self.name} item {index}"
        try:
            with seeded_globals(seed):
                value = self.dataset[index]
        except AltTrainError:
            raise
        except Exception as exc:
            raise DataError(f"{where} failed ({type(exc).__name__}: {exc}{_where(exc)}): fix the data set or the "
                            f"file behind that item") from None
        pair = isinstance(value, (tuple, list))
        if pair and len(value) != 2:
            raise DataError(f"{where} is a sequence of {len(value)} values: items must be an image or (image, label)")
        image, label = as_image(value[0] if pair else value, where), _label(value[1], where) if pair else None
        if self.shape is None:
            self.shape, self.labelled = tuple(image.shape), pair
        elif tuple(image.shape) != self.shape or pair != self.labelled:
            first = f"{self.shape}{' with a label' if self.labelled else ''}"
            raise DataError(f"{where} is an image of shape {tuple(image.shape)}{' with a label' if pair else ''} "
                            f"but item 0 is {first}: every item must match (resize and crop in the data set's "
                            f"transform)")
        return image, label

    def read(self, indices: torch.Tensor | Sequence[int], seed: int, epoch: int) -> Batch:
        items = [self.item(i, derive_seed(seed, SALT_ITEM, epoch, i)) for i in as_list(indices)]
        return self._batch(items)

    def _batch(self, items: list[tuple[torch.Tensor, int | None]]) -> Batch:
        from torch.utils.data import default_collate

        labels = torch.tensor([label for _, label in items], dtype=torch.int64) if self.labelled else None
        return Batch(default_collate([image for image, _ in items]), labels)

    def __call__(self, indices: torch.Tensor) -> torch.Tensor:
        return self.reference(indices).samples

    def reference(self, indices: torch.Tensor) -> Batch:
        return self._batch([self.item(i, derive_seed(SALT_REFERENCE_ITEM, i)) for i in as_list(indices)])


def _label(value: Any, where: str) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if not is_int(value):
        raise DataError(f"{where} has the label {value!r}: labels must be integers (class indices)")
    return int(value)


def _class_count(dataset: Any, labels: torch.Tensor | None) -> int | None:
    classes = getattr(dataset, "classes", None)
    if isinstance(classes, (list, tuple)) and classes:
        return len(classes)
    if is_int(getattr(dataset, "num_classes", None)):
        return int(dataset.num_classes)
    return int(labels.max()) + 1 if labels is not None and len(labels) else None


def _targets(dataset: Any, size: int) -> torch.Tensor | None:
    """Every item's label without reading the items: torchvision's ``targets`` list, when it has one."""
    targets = getattr(dataset, "targets", None)
    try:
        labels = torch.as_tensor(targets, dtype=torch.int64) if targets is not None else None
    except (TypeError, ValueError, RuntimeError):
        return None
    return labels if labels is not None and labels.shape == (size,) else None


class DatasetSource(DecodedSource):
    """A user's data set: its reference labels come from the items when it lists no ``targets``."""

    def reference_labels(self, n: int) -> torch.Tensor | None:
        if self.labels is not None or not self.reader.labelled:
            return super().reference_labels(n)
        return self.reader.reference(self.reference_indices(n)).labels


def dataset(dataset: Any, batch_size: int = 64, num_classes: int | None = None, num_workers: int | str = "auto",
            prefetch: int = 2, timeout: float = 300.0, subset: float = 1.0) -> DatasetSource:
    """A map-style ``Dataset`` (``data.dataset``, built from its ``_target_``) as a finite, resumable source.

    Item 0 is read here, to learn the sample shape and whether items carry labels. ``num_classes``:
    null takes ``len(dataset.classes)``, ``dataset.num_classes`` or one more than the largest of
    ``dataset.targets``, whichever it has. Other arguments: :func:`alttrain.data.image_folder`.
    """
    check_int("data.batch_size", batch_size, 1)
    if num_classes is not None:
        check_int("data.num_classes", num_classes, 1)
    check_pipeline(num_workers, prefetch, timeout, subset)
    name = f"data.dataset ({type(dataset).__module__}.{type(dataset).__qualname__})"
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ConfigError(f"{name} is no map-style data set: it needs __getitem__ and __len__ (an "
                          f"IterableDataset cannot be resumed at a position)")
    size = len(dataset)
    if not is_int(size) or size < 1:
        raise DataError(f"{name} has {size!r} items: it needs at least one")
    reader = DatasetItems(dataset, name)
    first = reader.reference(torch.tensor([0])).samples
    low, high = float(first.min()), float(first.max())
    if low < -1.001 or high > 1.001:
        log.warning("%s: item 0 spans [%.3g, %.3g], but images are expected in [-1, 1] (float items are used "
                    "as they are: normalise them in the data set, e.g. Normalize(0.5, 0.5) after ToTensor)",
                    name, low, high)
    labels = _targets(dataset, size) if reader.labelled else None
    classes = (num_classes or _class_count(dataset, labels)) if reader.labelled else None
    if reader.labelled and classes is None:
        log.warning("%s: items carry labels but the number of classes is unknown (no classes, num_classes or "
                    "targets attribute): set data.num_classes for a conditional model", name)
    return DatasetSource(
        name=name, kind="images", sample_shape=reader.shape, batch_size=batch_size, size=size, labels=labels,
        num_classes=classes,
        fetch=reader, reader=reader, num_workers=num_workers, prefetch=prefetch, timeout=timeout, subset=subset,
    )
