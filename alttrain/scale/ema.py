"""An exponential moving average (EMA) of the generator, for samples, metrics and ``scripts/sample.py``.

The decay comes from a half-life counted in training samples, as in StyleGAN2-ADA
(``ema_beta = 0.5 ** (batch / ema_nimg)``): after ``half_life_samples`` samples an old weight's
share has halved, whatever the batch size, ``accumulate`` or number of processes. A constant
decay such as 0.999 would silently mean a different averaging window for every batch size.

With ``rampup`` (StyleGAN2-ADA's ``ema_rampup``, e.g. 0.05) the half-life is at most
``rampup * samples seen so far``, so early on the average follows the fast-moving generator
instead of dragging its random initialisation along; the very first update copies it.

Parameters are averaged. Of the buffers, BatchNorm's running mean and variance are averaged
too (they are statistics, like the weights); every other buffer is copied: a spectral-norm
power-iteration vector, for instance, must stay a unit vector, which an average is not.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from alttrain.checks import check_int, check_positive
from alttrain.errors import ConfigError

AVERAGED_BUFFERS = ("running_mean", "running_var")


class EMA:
    """A frozen copy (``model``) of ``source`` that follows it by exponential moving average.

    ``update(batch)`` is called after each optimizer update of ``source``; ``batch`` is the number
    of samples that update trained on (``batch_size * accumulate * world_size``). ``samples``
    counts them, for the ramp-up and for an exact resume.
    """

    def __init__(self, source: nn.Module, half_life_samples: int, rampup: float | None = None):
        check_int("trainer.ema.half_life_samples", half_life_samples, 1)
        if rampup is not None:
            check_positive("trainer.ema.rampup", rampup)
        self.source, self.half_life_samples = source, half_life_samples
        self.rampup = None if rampup is None else float(rampup)
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        self.samples = 0
        self._params = (list(self.model.parameters()), list(source.parameters()))
        averaged, copied = _split_buffers(self.model), _split_buffers(source)
        self._averaged = (averaged[0], copied[0])
        self._copied = (averaged[1], copied[1])

    def beta(self, batch: int) -> float:
        """The weight the average keeps in an update of ``batch`` samples (the source gets ``1 - beta``)."""
        half_life = float(self.half_life_samples)
        if self.rampup is not None:
            half_life = min(half_life, self.samples * self.rampup)
        return 0.5 ** (batch / half_life) if half_life > 0 else 0.0

    @torch.no_grad()
    def update(self, batch: int) -> float:
        """Move the average towards ``source`` after one update of ``batch`` samples; returns beta."""
        beta = self.beta(batch)
        ema_params, src_params = self._params
        # lerp(ema, src, w) = ema + w (src - ema): beta ema + (1 - beta) src; w = 1 returns src exactly.
        torch._foreach_lerp_(ema_params, src_params, 1.0 - beta)
        if self._averaged[0]:
            torch._foreach_lerp_(self._averaged[0], self._averaged[1], 1.0 - beta)
        for ema_buf, src_buf in zip(*self._copied):
            ema_buf.copy_(src_buf)
        self.samples += batch
        return beta

    def state_dict(self) -> dict[str, Any]:
        # "model" is what scripts/sample.py loads into a freshly built generator.
        return {"model": self.model.state_dict(), "samples": self.samples,
                "half_life_samples": self.half_life_samples, "rampup": self.rampup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the average and its sample count; the half-life and ramp-up stay as configured now.

        A mismatching state dict is named by :func:`alttrain.persist.checkpoint.load_into` before this.
        """
        self.model.load_state_dict(state["model"], strict=True)
        self.samples = int(state["samples"])


def _split_buffers(module: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(buffers to average, buffers to copy), in ``named_buffers`` order."""
    averaged_names = {f"{prefix}.{name}" if prefix else name
                      for prefix, m in module.named_modules()
                      if isinstance(m, nn.modules.batchnorm._NormBase)
                      for name in AVERAGED_BUFFERS if getattr(m, name, None) is not None}
    averaged, copied = [], []
    for name, buf in module.named_buffers():
        (averaged if name in averaged_names and buf.is_floating_point() else copied).append(buf)
    return averaged, copied


def make_ema(source: nn.Module, half_life_samples: int | None, rampup: float | None = None) -> EMA | None:
    """The EMA of ``source`` as configured by ``trainer.ema``; ``None`` when ``half_life_samples`` is null."""
    if half_life_samples is None:
        if rampup is not None:
            raise ConfigError("trainer.ema.rampup is set but trainer.ema.half_life_samples is null (EMA off); "
                              "set a half-life, e.g. trainer.ema.half_life_samples=10000")
        return None
    return EMA(source, half_life_samples, rampup)
