"""One GAN written three ways, to measure what a framework adds to a training step.

* :func:`alttrain_trainer`: alttrain's :class:`~alttrain.engine.trainer.Trainer` with the default D-then-G
  schedule and the non-saturating logistic loss (``loss=ns``), bare or ``logged``;
* :class:`alttrain.benchmarks.plain_loop.PlainLoop`: the same math written by hand, the floor any
  framework adds overhead to;
* :mod:`alttrain.benchmarks.lightning_gan`: Lightning manual optimization with
  ``toggle_optimizer`` (needs the optional ``bench`` extra), bare or ``logged``.

*Logged* is each framework as a user runs it by default: losses logged to TensorBoard every
``LOG_EVERY`` steps and a progress bar. alttrain gets its TensorBoard logger and tqdm bar;
Lightning gets its default ``Trainer`` (TensorBoard logger, progress bar, model summary) and a
module that calls ``self.log_dict(..., prog_bar=True)`` each step, as Lightning's GAN example does.

All three start from :func:`make_setup`, which builds the models from one seed and streams real
data from alttrain's own sources, so the three runs see the same weights, the same batches and the
same draws from the global RNG, in the same order. ``scripts/bench.py`` times them;
``tests/test_bench.py`` proves they compute the same thing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from alttrain.data import digits, ring8
from alttrain.data.source import BatchStream
from alttrain.engine.hooks import Callback
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)
from alttrain.run.instantiate import build_loss_terms

# The sizes of the shipped configs: model/mlp.yaml on ring8, and model/dcgan.yaml on digits.
WORKLOADS = {
    "mlp": {"batch_size": 256, "hidden_dim": 128, "depth": 2, "latent_dim": 2},
    "dcgan": {"batch_size": 64, "image_size": 32, "base_width": 16, "latent_dim": 64},
}
# optim/adam.yaml, for both networks.
ADAM = {"lr": 2e-4, "betas": (0.5, 0.999)}
ALL_PARAMS = [{"name": "all", "params": ["*"]}]
NS_LOSS_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "loss" / "ns.yaml"  # loss=ns
LOG_EVERY = 50  # conf/trainer/default.yaml's log_every, and Lightning's log_every_n_steps default


@dataclass(eq=False)
class Setup:
    """Freshly initialised models, an optimizer factory and a real-data stream for one run."""

    workload: str
    generator: nn.Module
    discriminator: nn.Module
    optimizer: Callable[..., torch.optim.Optimizer]  # called with parameters or param groups
    stream: BatchStream
    latent_dim: int
    batch_size: int
    device: torch.device


def make_setup(workload: str, seed: int = 0, device: str | torch.device = "cpu", **sizes: int) -> Setup:
    """Build ``workload`` (``"mlp"`` or ``"dcgan"``) with its default sizes, overridden by ``sizes``.

    The global RNG is seeded here and then drawn from only by the models' initialisation, so two
    setups with the same arguments are identical, RNG state included.
    """
    if workload not in WORKLOADS:
        raise ConfigError(f"unknown workload {workload!r}; choose one of: {', '.join(WORKLOADS)}")
    unknown = set(sizes) - set(WORKLOADS[workload])
    if unknown:
        raise ConfigError(f"workload {workload!r} has no size {sorted(unknown)[0]!r}; "
                          f"its sizes are: {', '.join(WORKLOADS[workload])}")
    s = {**WORKLOADS[workload], **sizes}
    device = torch.device(device)
    torch.manual_seed(seed)
    if workload == "mlp":
        data = ring8(batch_size=s["batch_size"])
        generator = MLPGenerator(s["latent_dim"], 2, s["hidden_dim"], s["depth"])
        discriminator = MLPDiscriminator(2, s["hidden_dim"], s["depth"])
    else:
        data = digits(batch_size=s["batch_size"], image_size=s["image_size"])
        generator = DCGANGenerator(s["latent_dim"], s["image_size"], 1, s["base_width"])
        discriminator = DCGANDiscriminator(s["image_size"], 1, s["base_width"])
    return Setup(workload, generator.to(device), discriminator.to(device),
                 functools.partial(torch.optim.Adam, **ADAM), data.stream(seed=seed),
                 s["latent_dim"], s["batch_size"], device)


def ns_loss_terms() -> dict:
    """The terms of ``conf/loss/ns.yaml``, built as ``scripts/train.py`` builds them (through Hydra)."""
    if not NS_LOSS_CONFIG.is_file():
        raise ConfigError(f"{NS_LOSS_CONFIG} not found: the benchmark builds alttrain's loss from the repository's conf/; "
                          "run it from a checkout of the repository")
    return build_loss_terms(OmegaConf.load(NS_LOSS_CONFIG))


def alttrain_trainer(setup: Setup, max_steps: int, log_dir: str | None = None,
                     callbacks: Sequence[Callback] = (), reuse_fakes: bool = True,
                     compile: str | None = None) -> Trainer:
    """The Trainer ``scripts/train.py`` would build for ``loss=ns``: bare, or ``logged`` into ``log_dir``.

    ``reuse_fakes`` (``trainer.reuse_fakes``, on by default): one G forward per step; off, every phase
    draws its own fakes. ``compile``: a ``torch.compile`` backend (``trainer.compile``).

    Logged: TensorBoard every ``LOG_EVERY`` steps and a tqdm bar (on stderr), as on a terminal;
    no samples, checkpoints or metrics, which Lightning does not make by default either.
    ``callbacks`` come after those (a benchmark's clock).
    """
    g = build_network("generator", setup.generator, ALL_PARAMS, setup.optimizer)
    d = build_network("discriminator", setup.discriminator, ALL_PARAMS, setup.optimizer)
    terms = ns_loss_terms()
    phases = [Phase("D", d, terms["d"]), Phase("G", g, terms["g"])]
    logging: list[Callback] = []
    if log_dir is not None:
        from alttrain.callbacks.loggers import LogCallback, TensorBoard
        from alttrain.callbacks.progress import ProgressBar

        logging = [ProgressBar(mode="always"), LogCallback([TensorBoard(log_dir)], log_every=LOG_EVERY)]
    return Trainer([g, d], phases, setup.stream, max_steps=max_steps, callbacks=[*logging, *callbacks],
                   log_every=LOG_EVERY if log_dir is not None else 0, reuse_fakes=reuse_fakes, compile=compile)


__all__ = ["ADAM", "LOG_EVERY", "WORKLOADS", "Setup", "alttrain_trainer", "make_setup", "ns_loss_terms"]
