"""The benchmark GAN in Lightning: manual optimization, ``toggle_optimizer`` around each update.

The math and the order of draws from the global RNG are those of
:class:`~alttrain.benchmarks.plain_loop.PlainLoop` (and so of alttrain's default schedule): the
weights after any number of steps are the same. Lightning is an optional extra
(``pip install -e ".[bench]"``) and is imported only when a function here is called.

``run_lightning`` reads the clock at the start of chosen batches (``on_train_batch_start``), so
Lightning's own per-batch work (hooks, batch transfer, progress tracking) is inside the timing.
"""

from __future__ import annotations

import functools
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from alttrain.benchmarks import LOG_EVERY, Setup
from alttrain.errors import ConfigError
from alttrain.losses import d_logistic, g_nonsaturating


def require_lightning() -> Any:
    """``lightning.pytorch``, or a one-line error naming the extra that provides it."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ConfigError("the Lightning benchmark needs Lightning, which is not installed: "
                          "pip install -e \".[bench]\" (or leave lightning out of --impls)") from None
    return pl


def quiet_lightning() -> None:
    """Silence Lightning's banners and advice: a benchmark's output is its table."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"lightning(\.|$)")
    warnings.filterwarnings("ignore", message=r".*(num_workers|IterableDataset|barebones).*")


class _Batches(torch.utils.data.IterableDataset):
    """Hands Lightning alttrain's batch stream unchanged (``batch_size=None``: no collation)."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        return (batch.samples for batch in self.stream)


@functools.lru_cache(maxsize=1)
def _module_class() -> type:
    pl = require_lightning()

    class GANModule(pl.LightningModule):
        """D then G per batch, each update between ``toggle_optimizer`` and ``untoggle_optimizer``."""

        def __init__(self, setup: Setup, marks: tuple[int, ...], clock: Callable[[], float], log: bool = False):
            super().__init__()
            self.automatic_optimization = False
            self.log_losses = log
            self.setup_, self.marks, self.clock = setup, frozenset(marks), clock  # marks: batch indices to time
            self.generator, self.discriminator = setup.generator, setup.discriminator
            # The idle network's buffers are put back after each update, as alttrain does.
            self.g_buffers, self.d_buffers = list(self.generator.buffers()), list(self.discriminator.buffers())
            self.g_saved = [torch.empty_like(b) for b in self.g_buffers]
            self.d_saved = [torch.empty_like(b) for b in self.d_buffers]
            self.times: list[float] = []

        def configure_optimizers(self):
            return [self.setup_.optimizer(self.discriminator.parameters()),
                    self.setup_.optimizer(self.generator.parameters())]

        def on_train_batch_start(self, batch, batch_idx):
            if batch_idx in self.marks:
                if self.setup_.device.type == "cuda":
                    torch.cuda.synchronize(self.setup_.device)
                self.times.append(self.clock())
            return None

        def training_step(self, real, batch_idx):
            s = self.setup_
            opt_d, opt_g = self.optimizers()
            self.toggle_optimizer(opt_d)
            opt_d.zero_grad(set_to_none=True)
            _copy(self.g_saved, self.g_buffers)
            with torch.no_grad():
                fake = self.generator(torch.randn(real.shape[0], s.latent_dim, device=s.device))
            loss_d = d_logistic(self.discriminator(real), self.discriminator(fake))
            self.manual_backward(loss_d)
            opt_d.step()
            _copy(self.g_buffers, self.g_saved)
            self.untoggle_optimizer(opt_d)

            self.toggle_optimizer(opt_g)
            opt_g.zero_grad(set_to_none=True)
            _copy(self.d_saved, self.d_buffers)
            z = torch.randn(s.batch_size, s.latent_dim, device=s.device)
            loss_g = g_nonsaturating(self.discriminator(self.generator(z)))
            self.manual_backward(loss_g)
            opt_g.step()
            _copy(self.d_buffers, self.d_saved)
            self.untoggle_optimizer(opt_g)
            if self.log_losses:
                self.log_dict({"loss/D": loss_d.detach(), "loss/G": loss_g.detach()}, prog_bar=True)

    return GANModule


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:
        with torch.no_grad():
            torch._foreach_copy_(dst, src)


def fit_lightning(setup: Setup, batches: int, marks: tuple[int, ...] = (),
                  clock: Callable[[], float] = time.perf_counter, log_dir: str | None = None) -> Any:
    """Train ``batches`` D+G steps with Lightning; returns the module.

    Bare (``log_dir=None``): ``barebones=True``, Lightning at its fastest. Logged: the default
    Trainer writing into ``log_dir``, the module logging both losses each step with ``prog_bar=True``.
    The module's ``times`` holds the clock read at the start of each batch index in ``marks``.
    """
    pl = require_lightning()
    quiet_lightning()
    module = _module_class()(setup, tuple(marks), clock, log=log_dir is not None)
    # A private generator for the DataLoader's base seed: drawing it from the global RNG would
    # shift every later latent draw and the weights could no longer be compared.
    loader = torch.utils.data.DataLoader(_Batches(setup.stream), batch_size=None,
                                         generator=torch.Generator())
    accelerator = "gpu" if setup.device.type == "cuda" else "cpu"
    devices = [setup.device.index or 0] if accelerator == "gpu" else 1
    # barebones: no logger, checkpointing, progress bar, model summary or sanity check, i.e.
    # Lightning at its fastest. Logged: the defaults (its checkpoint is written after the last batch,
    # outside the timed span).
    options = ({"barebones": True} if log_dir is None else
               {"default_root_dir": log_dir, "log_every_n_steps": LOG_EVERY})
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, max_epochs=1, max_steps=-1,
                         limit_train_batches=batches, **options)
    trainer.fit(module, train_dataloaders=loader)
    return module


def run_lightning(setup: Setup, marks: list[int], clock: Callable[[], float] = time.perf_counter,
                  log_dir: str | None = None) -> list[float]:
    """The clock (``clock``) read when each of ``marks`` batches (ascending) had been trained."""
    # The batch after the last mark only starts (and trains) after the clock is read: it closes the span.
    module = fit_lightning(setup, marks[-1] + 1, marks=tuple(marks), clock=clock, log_dir=log_dir)
    return module.times
