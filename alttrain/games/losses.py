"""GAN losses as pure functions of discriminator logits, named by the network they train.

``d_*`` train the discriminator (real and fake logits), ``g_*`` the generator (fake logits only).
Every loss is a scalar mean over the batch. The logistic losses use ``softplus`` rather than
``log(sigmoid(.))``: ``-log(sigmoid(x)) = softplus(-x)`` stays finite, with a finite gradient, for
logits of any size, where ``log(sigmoid(-1e4))`` is ``-inf`` in float32.

The penalties train the discriminator too; they return the bare penalty, so the caller applies its
weight (λ for the gradient penalty, γ/2 for R1). They differentiate with respect to the *inputs*
only, so they also work while the discriminator's parameters have ``requires_grad=False``, and
under ``torch.no_grad()``. Both assume the discriminator scores each sample independently:
BatchNorm in D mixes samples, making the per-sample input gradient meaningless, and in train mode
their extra forward pass also updates its running statistics.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

Discriminator = Callable[[torch.Tensor], torch.Tensor]


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the original GAN, for D."""
    # E[-log σ(D(x))] + E[-log(1 - σ(D(G(z))))] = E[softplus(-D(x))] + E[softplus(D(G(z)))]
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss (Goodfellow et al. 2014): strong gradients while D wins."""
    # E[-log σ(D(G(z)))] = E[softplus(-D(G(z)))]
    return F.softplus(-fake_logits).mean()


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Hinge loss for D (Lim & Ye 2017; SN-GAN, BigGAN)."""
    # E[max(0, 1 - D(x))] + E[max(0, 1 + D(G(z)))]
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge loss."""
    # -E[D(G(z))]
    return -fake_logits.mean()


def d_wasserstein(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Critic loss of WGAN (Arjovsky et al. 2017); needs a Lipschitz constraint such as the gradient penalty."""
    # E[D(G(z))] - E[D(x)]
    return fake_logits.mean() - real_logits.mean()


def g_wasserstein(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of WGAN."""
    # -E[D(G(z))]
    return -fake_logits.mean()


def d_lsgan(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Least-squares loss for D (Mao et al. 2017), targets 1 for real and 0 for fake."""
    # ½ E[(D(x) - 1)²] + ½ E[D(G(z))²]
    return 0.5 * (real_logits - 1.0).pow(2).mean() + 0.5 * fake_logits.pow(2).mean()


def g_lsgan(fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator side of LSGAN: pull fake scores to the real target 1."""
    # ½ E[(D(G(z)) - 1)²]
    return 0.5 * (fake_logits - 1.0).pow(2).mean()


def _input_gradient(discriminator: Discriminator, x: torch.Tensor) -> torch.Tensor:
    """∇_x D(x) per sample, kept in the graph (create_graph) so a penalty on it trains D."""
    with torch.enable_grad():  # the penalty needs a graph even if the caller is in no_grad
        x = x.detach().requires_grad_(True)
        logits = discriminator(x)
        # Samples are scored independently, so the gradient of the sum is each sample's own.
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return grad.flatten(1)


def gradient_penalty(discriminator: Discriminator, real: torch.Tensor, fake: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017) at random points between real and fake samples.

    One α ~ U(0, 1) per sample, drawn from ``generator`` (a ``torch.Generator`` on ``real``'s
    device) when given, else from the global RNG. Neither input is differentiated through, so the
    generator that made ``fake`` receives no gradient.
    """
    # E[(‖∇_x̂ D(x̂)‖₂ - 1)²],  x̂ = α·x + (1 - α)·G(z)
    alpha_shape = (real.shape[0],) + (1,) * (real.dim() - 1)
    alpha = torch.rand(alpha_shape, generator=generator, device=real.device, dtype=real.dtype)
    mixed = alpha * real.detach() + (1.0 - alpha) * fake.detach()
    grad = _input_gradient(discriminator, mixed)
    return (grad.norm(2, dim=1) - 1.0).pow(2).mean()


def r1_penalty(discriminator: Discriminator, real: torch.Tensor) -> torch.Tensor:
    """R1 penalty (Mescheder et al. 2018): squared input-gradient norm on real data, without γ/2."""
    # E[‖∇_x D(x)‖₂²],  x ~ data
    grad = _input_gradient(discriminator, real)
    return grad.pow(2).sum(1).mean()


def auxiliary_classification(class_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of an auxiliary classifier's logits against the labels (ACGAN, Odena et al. 2017)."""
    # E[-log softmax(c(x))_y]
    return F.cross_entropy(class_logits, labels)


def l1_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference, the cycle-consistency distance of CycleGAN (Zhu et al. 2017)."""
    # E[|a - b|]
    return (a - b).abs().mean()
