"""The hand-written loop alttrain's Trainer is measured against: same math, nothing else.

One step is a D update then a G update, exactly as alttrain's default schedule with ``loss=ns``:

* D: clear D's gradients; draw a real batch; make fakes from ``z ~ N(0, I)`` under ``no_grad``;
  ``softplus(-D(x)).mean() + softplus(D(G(z))).mean()``; backward; Adam step.
* G: clear G's gradients; switch D's parameters to ``requires_grad=False`` (``freeze_d``); draw
  ``z``; ``softplus(-D(G(z))).mean()``; backward; Adam step; switch them back.

The idle network's buffers (BatchNorm running statistics) are copied back after each phase, as
alttrain's freeze plan does, so the loop leaves parameters *and* buffers where alttrain does. The
global RNG is drawn from in the same order (D's ``z``, then G's ``z``), so after any number of
steps the weights equal alttrain's bit for bit (on CPU; see ``tests/test_bench.py``).

``reuse_fakes=True`` is the loop people write (pytorch/examples' DCGAN): one G forward per step, with
its graph; D's update scores ``fake.detach()`` and G's backpropagates through the same ``fake``. It
equals alttrain with ``trainer.reuse_fakes`` on (its default), bit for bit.
"""

from __future__ import annotations

import torch

from alttrain.benchmarks import Setup
from alttrain.games.losses import d_logistic, g_nonsaturating


class PlainLoop:
    """D-then-G steps on ``setup``; ``freeze_d=False`` leaves D trainable during the G update.

    Freezing D changes no number G sees (its input gradient is the same either way); it only skips
    D's weight-gradient GEMMs, which is what :attr:`freeze_d` lets a benchmark measure.
    """

    def __init__(self, setup: Setup, freeze_d: bool = True, reuse_fakes: bool = False):
        self.setup, self.freeze_d, self.reuse_fakes = setup, freeze_d, reuse_fakes
        self.fake: torch.Tensor | None = None  # the step's fakes, with their graph (reuse_fakes)
        g, d = setup.generator, setup.discriminator
        self.g_opt, self.d_opt = setup.optimizer(g.parameters()), setup.optimizer(d.parameters())
        # Lists cached once: walking module.parameters() costs microseconds per tensor per call.
        self.d_params = list(d.parameters())
        self.g_buffers, self.d_buffers = list(g.buffers()), list(d.buffers())
        self.g_saved = [torch.empty_like(b) for b in self.g_buffers]
        self.d_saved = [torch.empty_like(b) for b in self.d_buffers]

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One D update and one G update; returns their detached losses (no host sync)."""
        return self.d_step(), self.g_step()

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.d_step()
            self.g_step()

    def d_step(self) -> torch.Tensor:
        s = self.setup
        if self.reuse_fakes:  # the step's one G forward, before D's update, as alttrain makes it
            self.fake = s.generator(torch.randn(s.batch_size, s.latent_dim, device=s.device))
        self.d_opt.zero_grad(set_to_none=True)
        real = next(s.stream).samples.to(s.device, non_blocking=True)
        if self.reuse_fakes:
            fake = self.fake.detach()
        else:
            _copy(self.g_saved, self.g_buffers)  # G runs forward in train mode: keep its statistics
            with torch.no_grad():
                fake = s.generator(torch.randn(real.shape[0], s.latent_dim, device=s.device))
        loss = d_logistic(s.discriminator(real), s.discriminator(fake))
        loss.backward()
        self.d_opt.step()
        if not self.reuse_fakes:
            _copy(self.g_buffers, self.g_saved)
        return loss.detach()

    def g_step(self) -> torch.Tensor:
        s = self.setup
        self.g_opt.zero_grad(set_to_none=True)
        if self.freeze_d:
            for p in self.d_params:
                p.requires_grad_(False)
        _copy(self.d_saved, self.d_buffers)
        if self.reuse_fakes:
            fake, self.fake = self.fake, None
        else:
            fake = s.generator(torch.randn(s.batch_size, s.latent_dim, device=s.device))
        loss = g_nonsaturating(s.discriminator(fake))
        loss.backward()
        self.g_opt.step()
        _copy(self.d_buffers, self.d_saved)
        if self.freeze_d:
            for p in self.d_params:
                p.requires_grad_(True)
        return loss.detach()


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:  # a loop written for an MLP would have no copies at all: cost it nothing
        with torch.no_grad():
            torch._foreach_copy_(dst, src)
