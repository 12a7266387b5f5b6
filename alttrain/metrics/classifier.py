"""A small CNN trained on sklearn's 8x8 digits: the offline feature network for FID and KID.

Inception-v3 features need a download and mean little on 8x8 digits; this network ships with the
package (``alttrain/assets/digits_classifier.pt``, made by ``scripts/train_digits_classifier.py``)
and its penultimate layer plays the role of Inception's pool features. Scores computed with it are
comparable with each other, never with published Inception FIDs.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alttrain.errors import CheckpointError, ConfigError

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digits_classifier.pt"
# Keys of the metadata stored next to the state dict; the constructor arguments among them
# rebuild the network before the weights load.
ARCH_KEYS = ("input_size", "channels1", "channels2", "num_features", "num_classes")


class DigitsClassifier(nn.Module):
    """Two conv blocks, a feature layer and a linear head; outputs logits.

    Input is ``(B, 1, H, W)`` in [-1, 1] at any H, W: it is resized (bilinear, antialiased) to
    ``input_size`` square first, so generators of any resolution are scored by the same network.
    ``num_features`` is the width of :meth:`features` (torchmetrics reads this attribute).
    ``dropout`` acts only while training (the shipped weights were trained with 0.3), so scoring
    does not need it to rebuild the network.
    """

    def __init__(
        self,
        input_size: int = 16,
        channels1: int = 32,
        channels2: int = 64,
        num_features: int = 128,
        num_classes: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if input_size % 4:
            raise ConfigError(
                f"DigitsClassifier input_size must be a multiple of 4 (two 2x poolings), got {input_size}"
            )
        self.input_size = input_size
        self.channels1 = channels1
        self.channels2 = channels2
        self.num_features = num_features
        self.num_classes = num_classes
        self.body = nn.Sequential(
            nn.Conv2d(1, channels1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels1, channels2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Dropout(dropout),  # training-time regulariser only: identity in eval mode
            nn.Linear(channels2 * (input_size // 4) ** 2, num_features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)

    def resize(self, x: Tensor) -> Tensor:
        """Bring ``(B, 1, H, W)`` images to the training resolution (no-op when already there)."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ConfigError(
                f"DigitsClassifier scores 1-channel images (B, 1, H, W), got shape {tuple(x.shape)}; "
                "use it only with grayscale digit generators"
            )
        if x.shape[-2:] == (self.input_size, self.input_size):
            return x
        # antialias matters when shrinking (32 -> 16): without it bilinear aliases thin strokes.
        return F.interpolate(x, size=self.input_size, mode="bilinear", antialias=True, align_corners=False)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, num_features)``: the embedding FID/KID compare."""
        return self.body(self.resize(x))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.dropout(self.features(x)))


def load_digits_classifier(path: str | Path | None = None) -> DigitsClassifier:
    """Load the shipped (or given) weights into an eval-mode network whose parameters need no grad.

    The file holds ``{"state_dict": ..., "meta": {...}}`` of tensors, ints, floats and strings, so it
    loads with ``weights_only=True``. Its zip checksums are verified first, because ``torch.load``
    never checks them and a flipped byte would silently change the scores.
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise CheckpointError(
            f"digits classifier weights not found at {path}; run scripts/train_digits_classifier.py to make them"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        if bad is not None:
            raise CheckpointError(
                f"digits classifier {path} is corrupted (bad CRC in {bad}); re-run scripts/train_digits_classifier.py"
            )
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["meta"]
        net = DigitsClassifier(**{key: int(meta[key]) for key in ARCH_KEYS})
        net.load_state_dict(blob["state_dict"])
    except (zipfile.BadZipFile, RuntimeError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(
            f"cannot load digits classifier {path} ({type(err).__name__}: {err}); "
            "re-run scripts/train_digits_classifier.py"
        ) from err
    net.meta = dict(meta)  # accuracy, seed, ...: kept for reports
    net.eval()
    net.requires_grad_(False)
    return net
