"""Sampling from a generator without side effects, and the metric that fits the data."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alttrain.engine.batch import LatentPrior
from alttrain.metrics.modes import mode_metrics, reconstruction_metrics
from alttrain.metrics.prdc import (
    K_DENSITY_COVERAGE,
    K_PRECISION_RECALL,
    prdc_where_possible,
)

EVAL_SEED = 2024  # fixed noise: successive evaluations compare like with like


@torch.no_grad()
def generate(generator: nn.Module, n: int, prior: LatentPrior, seed: int = EVAL_SEED,
             device: torch.device | str = "cpu", labels: torch.Tensor | None = None, conditional: bool = False,
             chunk: int = 512) -> torch.Tensor:
    """``n`` samples on the CPU from noise drawn with a private RNG, in eval mode.

    ``conditional``: the generator takes labels; ``labels`` (``(n,)``) says which, else they are drawn
    from ``prior`` with the same private RNG, after the noise. Neither the global RNG nor any buffer
    changes, so sampling mid-training cannot alter the run.
    """
    rng = torch.Generator().manual_seed(seed)
    noise = prior.latent(n, generator=rng)
    if conditional and labels is None:
        labels = prior.labels(n, generator=rng)
    was_training = generator.training
    generator.eval()
    try:
        outs = []
        for start in range(0, n, chunk):
            z = noise[start:start + chunk].to(device)
            if conditional:
                outs.append(generator(z, labels[start:start + chunk].to(device)).float().cpu())
            else:
                outs.append(generator(z).float().cpu())
        return torch.cat(outs)
    finally:
        generator.train(was_training)


def class_rows(num_classes: int, per_class: int) -> torch.Tensor:
    """Labels for a grid with one row per class: ``0 x per_class, 1 x per_class, ...``."""
    return torch.arange(num_classes).repeat_interleave(per_class)


class Evaluator:
    """Callable returning ``{metric: float}`` for the current generator; ``info`` describes how they were measured.

    Which metrics, by data:

    * 2-D mixtures: modes captured, % high quality, reverse KL (VEEGAN/PacGAN), and precision,
      recall, density and coverage on the raw points;
    * one-channel 10-class images (digits, MNIST): FID, KID, class coverage and precision/recall/
      density/coverage in the feature space of the shipped digits classifier, and for a conditional
      generator how often the classifier recognises the class asked for;
    * any images (CIFAR-10, MNIST, image folders), when ``inception_weights`` names the FID Inception
      weights: Inception FID, KID, IS and precision/recall/density/coverage, under ``inception/``.
      Without the weights ``info["note"]`` says that they did not run, and why.

    ``info`` holds only strings, ints and floats: ``features`` maps each feature space used to its
    extractor, weights' SHA-256, resize and sample counts. All real features are computed here, once.
    ``key_prefix`` starts the config keys named in errors and notes; ``seed`` draws the noise (and
    the labels, from ``seed + 1``).
    """

    def __init__(self, data, generator_fn: Callable[[], nn.Module] | None, prior: LatentPrior | None,
                 num_samples: int, device: torch.device | str = "cpu", conditional: bool = False,
                 encoder: nn.Module | None = None, inception_weights: str | None = None,
                 inception_sha256: str | None = None, key_prefix: str = "metrics.", seed: int = EVAL_SEED):
        self.generator_fn, self.prior, self.device, self.seed = generator_fn, prior, device, seed
        self.num_samples, self.conditional = num_samples, conditional
        self.reconstruct: Callable[[], dict[str, float]] | None = None
        if encoder is not None and data.kind == "points" and data.centers is not None:
            real, labels = data.reference(num_samples), data.reference_labels(num_samples)
            self.reconstruct = lambda: reconstruction_metrics(
                _rebuild(self.generator_fn(), encoder, real, device), labels, data.centers, data.std)
        self.scorers: list[Callable[[torch.Tensor, torch.Tensor | None], dict[str, float]]] = []
        self.features: dict[str, dict[str, Any]] = {}
        self.info: dict[str, Any] = {}
        if data.kind == "points":
            self._add_points(data)
        elif data.kind == "images" and data.sample_shape[0] == 1 and data.num_classes == 10:
            self._add_digits_classifier(data)
        if data.kind == "images":
            self._add_inception(data, inception_weights, inception_sha256, key_prefix)
        if self.features:
            self.info["features"] = self.features

    def _record(self, name: str, num_real: int, **fields: Any) -> None:
        self.features[name] = {**fields, "num_real": num_real, "num_fake": self.num_samples,
                               "k": {"precision_recall": K_PRECISION_RECALL, "density_coverage": K_DENSITY_COVERAGE}}

    def _add_points(self, data) -> None:
        real = data.reference(self.num_samples)
        if data.centers is not None:
            self.scorers.append(lambda fake, labels: mode_metrics(fake, data.centers, data.std))
        self.scorers.append(lambda fake, labels: prdc_where_possible(real, fake))
        self._record("points", len(real), extractor="none: the raw coordinates", resize="none")

    def _add_digits_classifier(self, data) -> None:
        from alttrain.metrics.classifier import DEFAULT_WEIGHTS, load_digits_classifier
        from alttrain.metrics.images import ImageMetrics

        net = load_digits_classifier()
        metrics = ImageMetrics(data.reference(min(self.num_samples, data.size)), feature_net=net)
        self.scorers.append(metrics.compute)
        self._record("digits_classifier", metrics.num_real,
                     extractor=f"shipped digits classifier ({DEFAULT_WEIGHTS.name}): {net.num_features} "
                               "penultimate features, 10 class logits",
                     weights_sha256=hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest(),
                     resize=f"bilinear, antialiased, to {net.input_size}x{net.input_size}")

    def _add_inception(self, data, weights: str | None, sha256: str | None, prefix: str) -> None:
        import alttrain.metrics.inception as inception  # torchmetrics and torch-fidelity: only when used

        if not weights:
            if data.name != "digits":  # 8x8 digits: the shipped classifier's features fit them, Inception's hardly
                ran = "no Inception metric ran" if self.scorers else "no image metric ran"
                self.info["note"] = f"no Inception weights given ({prefix}inception_weights): {ran}"
            return
        sha256 = sha256 or inception.PUBLISHED_SHA256
        net = inception.load_inception(weights, sha256, prefix, self.device)
        metrics = inception.InceptionMetrics(reference_batches(data, min(self.num_samples, data.size)), net)
        self.scorers.append(lambda fake, labels: metrics.compute(fake))
        self._record("inception", metrics.num_real, extractor=inception.EXTRACTOR,
                     weights=str(Path(weights).expanduser().resolve()), weights_sha256=sha256.lower(),
                     resize=inception.RESIZE, real_is=metrics.real_is)

    def score(self, fake: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Every metric of this data for ``fake`` samples (``labels``: the classes they were asked for)."""
        scores: dict[str, float] = {}
        for scorer in self.scorers:
            scores.update(scorer(fake, labels))
        return {k: float(v) for k, v in scores.items()}

    def __call__(self) -> dict[str, float]:
        if not self.scorers and self.reconstruct is None:
            return {}
        labels = None
        if self.conditional:
            labels = self.prior.labels(self.num_samples, generator=torch.Generator().manual_seed(self.seed + 1))
        fake = generate(self.generator_fn(), self.num_samples, self.prior, seed=self.seed, device=self.device,
                        labels=labels, conditional=self.conditional)
        scores = self.score(fake, labels)
        if self.reconstruct is not None:
            scores.update({k: float(v) for k, v in self.reconstruct().items()})
        return scores


def reference_batches(data, n: int, batch: int = 256) -> Iterator[torch.Tensor]:
    """The ``n`` images of ``data.reference(n)``, in order, a batch at a time (50k CIFAR images are 600 MB)."""
    if hasattr(data, "reference_indices") and hasattr(data, "fetch"):
        for indices in data.reference_indices(n).split(batch):
            yield data.fetch(indices)
    else:
        yield data.reference(n)


@torch.no_grad()
def _rebuild(generator: nn.Module, encoder: nn.Module, real: torch.Tensor, device) -> torch.Tensor:
    """``G(E(x))`` in eval mode, on the CPU; both networks' modes are put back."""
    modes = [(m, m.training) for m in (generator, encoder)]
    try:
        generator.eval(), encoder.eval()
        return generator(encoder(real.to(device))).float().cpu()
    finally:
        for m, training in modes:
            m.train(training)
