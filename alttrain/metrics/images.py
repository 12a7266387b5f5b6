"""FID, KID, class coverage and precision/recall of generated digits, in the digits classifier's feature space.

torchmetrics does the statistics (Fréchet distance via eigenvalues, the unbiased polynomial-kernel
MMD); the feature network is :class:`~alttrain.metrics.classifier.DigitsClassifier`, so nothing is
downloaded and torch-fidelity is not needed. The classifier runs once per image set: one pass
gives both the features (handed to torchmetrics through a pass-through module) and the logits
(for the class histogram). Scores are comparable between runs that use the same classifier
weights and real set, never with published Inception-based numbers.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from alttrain.errors import ConfigError
from alttrain.metrics.classifier import DigitsClassifier, load_digits_classifier
from alttrain.metrics.prdc import prdc_where_possible

# A class counts as covered when at least this fraction of the samples is predicted as it: a
# single stray prediction among thousands should not count as producing that digit.
COVERED_FRACTION = 0.01


class _PrecomputedFeatures(nn.Module):
    """The ``feature`` module handed to torchmetrics: its inputs already are features.

    ``num_features`` spares torchmetrics its probe with a random uint8 image; the float64 cast makes
    FID and KID accumulate and return in double precision.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.to(torch.float64)


class ImageMetrics:
    """Scores generated images against a fixed real set; the real features are computed once.

    Args:
        real: ``(N, C, H, W)`` real images in [-1, 1] (C must suit ``feature_net``: 1 for digits).
        feature_net: the network whose ``features``/``forward`` embed and classify images;
            ``None`` loads the shipped digits classifier.
        labels: optional ``(N,)`` true classes of ``real``; when given, ``real_accuracy`` reports
            how well ``feature_net`` classifies them (a check that the real set is prepared the
            way the network was trained).
        kid_subset_size: images per KID subset, capped by the real and fake counts.
        kid_subsets: number of random subsets KID averages over.
        seed: seeds KID's subset draws, so equal inputs give equal scores. The draws use a
            forked RNG: scoring never moves the training run's global random state.
        batch_size: images per forward pass of ``feature_net``.
    """

    def __init__(
        self,
        real: Tensor,
        feature_net: DigitsClassifier | None = None,
        *,
        labels: Tensor | None = None,
        kid_subset_size: int = 1000,
        kid_subsets: int = 100,
        seed: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.feature_net = load_digits_classifier() if feature_net is None else feature_net
        self.kid_subset_size = kid_subset_size
        self.kid_subsets = kid_subsets
        self.seed = seed
        self.batch_size = batch_size
        self.real_shape = _check_images("real", real, None)
        feats, logits = self._embed(real)
        self.real_accuracy = None if labels is None else _accuracy(logits, labels)

        wrapper = _PrecomputedFeatures(feats.shape[1])
        # reset_real_features=False: reset() after each compute drops only the fake statistics.
        # sync_on_compute=False: under torchrun only rank 0 evaluates, so a gather across ranks inside
        # compute() would wait for processes that never call it (a hang, or a closed connection).
        self._fid = FrechetInceptionDistance(feature=wrapper, reset_real_features=False, sync_on_compute=False)
        self._fid.update(feats, real=True)
        with warnings.catch_warnings():
            # KID warns that it keeps every feature; with a few thousand small vectors that is fine.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self._kid = KernelInceptionDistance(
                feature=wrapper, subsets=kid_subsets, subset_size=kid_subset_size, reset_real_features=False,
                sync_on_compute=False,
            )
        self._kid.update(feats, real=True)
        self.num_real = feats.shape[0]
        self.real_features = feats  # kept for precision/recall/density/coverage

    @torch.no_grad()
    def _embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        # One pass yields features and logits (head of the features = forward in eval mode); both
        # go to CPU float64 so the statistics do not depend on the device the generator ran on.
        device = next(self.feature_net.parameters()).device
        feats, logits = [], []
        for chunk in images.detach().split(self.batch_size):
            f = self.feature_net.features(chunk.to(device=device, dtype=torch.float32))
            feats.append(f.cpu().double())
            logits.append(self.feature_net.head(f).cpu().double())
        return torch.cat(feats), torch.cat(logits)

    def compute(self, fake: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Score ``fake`` images (same C, H, W as ``real``, values in [-1, 1]).

        Returns ``fid``; ``kid`` and ``kid_std`` (mean and std over subsets of the unbiased MMD²,
        which can dip below 0 when the sets match); ``class_entropy``, the entropy in nats of the
        histogram of predicted classes (0 when one class only, ln 10 = 2.3026 when all ten are
        equally frequent); ``classes_covered``, the number of classes predicted for at least 1% of
        the samples. With ``labels`` (the classes a conditional generator was asked for):
        ``class_accuracy``, the mean over classes of the share of a class's samples predicted as it,
        and ``class_accuracy_min``, the worst class's share. ``precision``, ``recall``, ``density`` and
        ``coverage`` in the classifier's feature space (:mod:`alttrain.metrics.prdc`; left out when
        there are too few samples for their k).
        """
        _check_images("fake", fake, self.real_shape)
        feats, logits = self._embed(fake)
        subset = min(self.kid_subset_size, self.num_real, feats.shape[0])
        try:
            self._fid.update(feats, real=False)
            fid = self._fid.compute().item()
            self._kid.update(feats, real=False)
            self._kid.subset_size = subset
            # KID draws its subsets with torch.randperm from the global generator.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                kid, kid_std = (v.item() for v in self._kid.compute())
        finally:
            self._fid.reset()
            self._kid.reset()
        predicted = logits.argmax(dim=1)
        counts = torch.bincount(predicted, minlength=logits.shape[1])
        scores = {
            "fid": fid,
            "kid": kid,
            "kid_std": kid_std,
            "class_entropy": _entropy(counts),
            "classes_covered": int((counts >= COVERED_FRACTION * counts.sum()).sum()),
            **prdc_where_possible(self.real_features, feats),
        }
        if labels is not None:
            per_class = class_accuracy(predicted, labels, logits.shape[1])
            scores["class_accuracy"] = sum(per_class) / len(per_class)
            scores["class_accuracy_min"] = min(per_class)
        return scores


def _check_images(name: str, images: Tensor, expected: tuple[int, ...] | None) -> tuple[int, ...]:
    # Shape mistakes surface here as one line, not as a matmul error deep inside torchmetrics.
    if not isinstance(images, Tensor) or images.dim() != 4:
        raise ConfigError(f"{name} images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if images.shape[0] < 2:
        raise ConfigError(f"{name} images: FID needs at least 2 images, got {images.shape[0]}")
    if expected is not None and tuple(images.shape[1:]) != expected:
        raise ConfigError(
            f"{name} images have shape (C, H, W) = {tuple(images.shape[1:])} but the real set has {expected}; "
            "score generated images at the data set's resolution"
        )
    return tuple(images.shape[1:])


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    if labels.shape != (logits.shape[0],):
        raise ConfigError(
            f"labels must have shape ({logits.shape[0]},) to match the real images, got {tuple(labels.shape)}"
        )
    return (logits.argmax(dim=1) == labels.to(logits.device)).double().mean().item()


def class_accuracy(predicted: Tensor, labels: Tensor, num_classes: int) -> list[float]:
    """Per class asked for, the share of its samples predicted as it (classes never asked for are left out)."""
    labels = labels.to(predicted.device)
    out = []
    for k in range(num_classes):
        asked = labels == k
        if bool(asked.any()):
            out.append((predicted[asked] == k).double().mean().item())
    return out


def _entropy(counts: Tensor) -> float:
    # H = sum_k p_k ln(1/p_k) over non-empty classes; written with 1/p so one class gives +0.0.
    total = int(counts.sum())
    return sum((n / total) * math.log(total / n) for n in counts.tolist() if n > 0)
