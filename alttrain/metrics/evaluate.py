"""Sampling from a generator without side effects, and the metric that fits the data."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from alttrain.metrics.modes import mode_metrics

EVAL_SEED = 2024  # fixed noise: successive evaluations compare like with like


@torch.no_grad()
def generate(generator: nn.Module, n: int, latent_dim: int, seed: int = EVAL_SEED,
             device: torch.device | str = "cpu", chunk: int = 512) -> torch.Tensor:
    """``n`` samples on the CPU from noise drawn with a private RNG, in eval mode.

    Neither the global RNG nor any buffer changes, so sampling mid-training cannot alter the run.
    """
    noise = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
    was_training = generator.training
    generator.eval()
    try:
        return torch.cat([generator(z.to(device)).float().cpu() for z in noise.split(chunk)])
    finally:
        generator.train(was_training)


class Evaluator:
    """Callable returning ``{metric: float}`` for the current generator.

    2-D mixtures: modes captured, % high quality, reverse KL (VEEGAN/PacGAN). One-channel images
    (digits, MNIST): FID, KID and class coverage in the feature space of the shipped digits
    classifier. Other data: no metric (an empty dict).
    """

    def __init__(self, data, generator_fn: Callable[[], nn.Module], latent_dim: int, num_samples: int,
                 device: torch.device | str = "cpu"):
        self.generator_fn, self.latent_dim, self.device = generator_fn, latent_dim, device
        self.num_samples = num_samples
        self.score: Callable[[torch.Tensor], dict[str, float]] | None = None
        if data.kind == "points" and data.centers is not None:
            self.score = lambda fake: mode_metrics(fake, data.centers, data.std)
        elif data.kind == "images" and data.sample_shape[0] == 1 and data.num_classes == 10:
            from alttrain.metrics.classifier import load_digits_classifier
            from alttrain.metrics.images import ImageMetrics

            n_real = min(num_samples, data.size)
            metrics = ImageMetrics(data.reference(n_real), feature_net=load_digits_classifier())
            self.score = metrics.compute

    def __call__(self) -> dict[str, float]:
        if self.score is None:
            return {}
        fake = generate(self.generator_fn(), self.num_samples, self.latent_dim, device=self.device)
        return {k: float(v) for k, v in self.score(fake).items()}
