"""Inception-v3 FID, KID, Inception Score and precision/recall, from a local copy of the FID weights.

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: the TensorFlow Inception of the
original FID code (2015-12-05 graph, 1008-class head) as pytorch-fid ported it, the network that
torchmetrics and torch-fidelity score with. Its weights come only from the file the user names
(``metrics.inception_weights``), checked against the SHA-256 of the published file
``pt_inception-2015-12-05-6726825d.pth``; nothing is ever downloaded.

Images in [-1, 1] are quantised to uint8 as a saved PNG would be (``round((x + 1) * 127.5)``),
grayscale is repeated to RGB, and the extractor resizes to 299x299 the way TensorFlow 1.x did
(see :data:`RESIZE`), so scores are comparable with numbers computed by the original TF code,
pytorch-fid and torch-fidelity on the same sample counts. torchmetrics' own ``FrechetInceptionDistance``
resizes with antialiased ``F.interpolate`` by default, which gives slightly different numbers.
torchmetrics does the statistics (FID via eigenvalues, the unbiased polynomial-kernel MMD for KID,
IS over splits), on features handed to it through a pass-through module.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from alttrain.errors import ConfigError
from alttrain.metrics.prdc import prdc_where_possible

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}"
# SHA-256 of that file (95,628,359 bytes); torch-fidelity's weights-inception-2015-12-05-6726825d.pth
# is the same file. The 6726825d in both names is its first 8 hex digits (the torch.hub convention).
PUBLISHED_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EXTRACTOR = ("Inception-v3 FID network (torch-fidelity FeatureExtractorInceptionV3): 2048 pool features for "
             "FID/KID/precision/recall, 1008 logits without bias for IS")
RESIZE = ("[-1, 1] -> uint8 round((x + 1) * 127.5); 1 channel repeated to RGB; bilinear to 299x299 as "
          "TensorFlow 1.x resizes (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x, "
          "align_corners=False, no antialiasing)")
FEATURES = ["2048", "logits_unbiased"]  # pool3 (FID, KID, PRDC) and the IS logits, from one forward pass


def _keys(prefix: str) -> tuple[str, str]:
    return f"{prefix}inception_weights", f"{prefix}inception_sha256"


def load_inception(path: str | Path, sha256: str = PUBLISHED_SHA256, prefix: str = "metrics.",
                   device: torch.device | str = "cpu") -> nn.Module:
    """The eval-mode Inception extractor with the weights in ``path``, after its SHA-256 matched ``sha256``.

    The file is read once; those bytes are hashed, then loaded with ``torch.load(weights_only=True)``,
    which refuses anything but tensors and containers. ``prefix`` starts the config keys named in
    errors (``metrics.`` for a run, empty for the evaluate command).
    """
    key, sha_key = _keys(prefix)
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}={path}: no such file; download {WEIGHTS_URL} once and pass its local path")
    data = path.read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256.lower():
        raise ConfigError(f"{key}={path} has SHA-256 {found}, expected {sha256.lower()}: pass the published "
                          f"{WEIGHTS_NAME}, or set {sha_key}={found} to use this file's weights")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        state = exc
    if not isinstance(state, dict):
        raise ConfigError(f"{key}={path} is not a plain state dict of tensors "
                          f"({type(state).__name__}); pass {WEIGHTS_NAME}")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            FeatureExtractorInceptionV3,
        )
    except ImportError:
        raise ConfigError(f"{key} needs torch-fidelity for the Inception network: pip install torch-fidelity") \
            from None
    try:
        # The extractor loads the file itself, with the unrestricted unpickler: hand it the same bytes the
        # weights-only loader just accepted, so nothing else can be unpickled (and a path, not None, means
        # it never reaches for its download URL).
        net = FeatureExtractorInceptionV3("inception-v3-compat", FEATURES,
                                          feature_extractor_weights_path=io.BytesIO(data))
    except RuntimeError as exc:  # load_state_dict: missing or unexpected tensors
        raise ConfigError(f"{key}={path} does not hold Inception-v3 FID weights "
                          f"({str(exc).splitlines()[0]}); pass {WEIGHTS_NAME}") from None
    return net.to(device).eval()


def to_uint8_rgb(images: Tensor) -> Tensor:
    """``(N, 1 or 3, H, W)`` floats in [-1, 1] -> uint8 RGB, the extractor's input."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ConfigError(f"Inception metrics score (N, 1 or 3, H, W) images, got shape {tuple(images.shape)}")
    x = ((images.float() + 1) * 127.5).round_().clamp_(0, 255).to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class _Given(nn.Module):
    """The ``feature`` module handed to torchmetrics: its inputs already are features (cast to float64)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.to(torch.float64)


class InceptionMetrics:
    """Scores generated images against a fixed real set; the real features are computed once, here.

    Args:
        real: ``(N, C, H, W)`` real images in [-1, 1], or an iterable of such batches (a large set
            need not be in memory at once).
        net: the extractor from :func:`load_inception`.
        kid_subset_size, kid_subsets: KID's subsets (the size capped by the sample counts).
        is_splits: Inception Score splits (10 in Salimans et al. 2016).
        seed: seeds the KID subsets and the IS shuffle, in a forked RNG: scoring never moves the
            run's global random state, and equal inputs give equal scores.
        batch_size: images per forward pass.
    """

    PREFIX = "inception/"

    def __init__(self, real: Tensor | Iterable[Tensor], net: nn.Module, *, kid_subset_size: int = 1000,
                 kid_subsets: int = 100, is_splits: int = 10, seed: int = 0, batch_size: int = 64) -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        self.net, self.batch_size, self.seed, self.kid_subset_size = net, batch_size, seed, kid_subset_size
        self.real_features, logits = self._embed([real] if isinstance(real, Tensor) else real)
        self.num_real = self.real_features.shape[0]
        if self.num_real < 2:
            raise ConfigError(f"Inception metrics need at least 2 real images, got {self.num_real}")
        pool, head = _Given(self.real_features.shape[1]), _Given(logits.shape[1])
        # reset_real_features=False: reset() after each compute drops only the fake statistics.
        # sync_on_compute=False: under torchrun only rank 0 evaluates; a gather would wait for the others.
        self._fid = FrechetInceptionDistance(feature=pool, reset_real_features=False, sync_on_compute=False)
        self._fid.update(self.real_features, real=True)
        with warnings.catch_warnings():
            # KID and IS warn that they keep every feature: a few thousand vectors are fine.
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            self._kid = KernelInceptionDistance(feature=pool, subsets=kid_subsets, subset_size=kid_subset_size,
                                                reset_real_features=False, sync_on_compute=False)
            self._is = InceptionScore(feature=head, splits=is_splits, sync_on_compute=False)
        self._kid.update(self.real_features, real=True)
        self.real_is = self._inception_score(logits)[0]  # a reference: CIFAR-10's train set scores about 11.2

    @torch.no_grad()
    def _embed(self, batches: Iterable[Tensor]) -> tuple[Tensor, Tensor]:
        # CPU float64 results, so the statistics do not depend on the device the network runs on.
        device = next(self.net.parameters()).device
        pools, logits = [], []
        for batch in batches:
            for chunk in batch.detach().split(self.batch_size):
                pool, logit = self.net(to_uint8_rgb(chunk).to(device))
                pools.append(pool.cpu().double())
                logits.append(logit.cpu().double())
        if not pools:
            raise ConfigError("Inception metrics got no real images")
        return torch.cat(pools), torch.cat(logits)

    def _inception_score(self, logits: Tensor) -> tuple[float, float]:
        try:
            self._is.update(logits)
            with torch.random.fork_rng(devices=[]):  # IS shuffles with the global generator
                torch.manual_seed(self.seed)
                mean, std = self._is.compute()
            return mean.item(), std.item()
        finally:
            self._is.reset()

    def compute(self, fake: Tensor) -> dict[str, float]:
        """Score ``fake`` ``(M, C, H, W)`` images in [-1, 1] (any resolution; C is 1 or 3).

        Returns, under ``inception/``: ``fid``; ``kid`` and ``kid_std`` (mean and std over subsets of
        the unbiased MMD², which dips below 0 when the sets match); ``is`` and ``is_std`` (over the
        splits); ``precision``, ``recall``, ``density``, ``coverage`` in pool-feature space (see
        :mod:`alttrain.metrics.prdc`; left out when there are too few samples for their k).
        """
        if fake.shape[0] < 2:
            raise ConfigError(f"Inception metrics need at least 2 generated images, got {fake.shape[0]}")
        feats, logits = self._embed([fake])
        try:
            self._fid.update(feats, real=False)
            fid = self._fid.compute().item()
            self._kid.update(feats, real=False)
            self._kid.subset_size = min(self.kid_subset_size, self.num_real, feats.shape[0])
            with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch.randperm
                torch.manual_seed(self.seed)
                kid, kid_std = (v.item() for v in self._kid.compute())
        finally:
            self._fid.reset()
            self._kid.reset()
        is_mean, is_std = self._inception_score(logits)
        # The k-NN distances are N x M x 2048 multiply-adds: on the network's device (a GPU when there is one).
        device = next(self.net.parameters()).device
        scores = {"fid": fid, "kid": kid, "kid_std": kid_std, "is": is_mean, "is_std": is_std,
                  **prdc_where_possible(self.real_features.to(device), feats.to(device))}
        return {self.PREFIX + name: value for name, value in scores.items()}
