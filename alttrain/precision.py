"""Mixed precision: autocast for the forward, and one GradScaler per optimizer for fp16.

Sharing one GradScaler between G and D couples them: an overflow in D's backward shrinks the scale
G's update is unscaled with, and ``update()`` runs once for two steps. Each network gets its own,
and the scalers travel in checkpoints.

Weights, gradients and optimizer states stay float32; autocast runs the matrix products and
convolutions in bf16/fp16. The discriminator's logits are cast back to float32
(:meth:`Precision.float_logits`) before any loss sees them, so softplus, squares and means are
computed in full precision: a bf16 loss keeps only about three significant digits.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from alttrain.errors import ConfigError
from alttrain.network import Network

MODES = ("32", "bf16", "16")
_NO_CONTEXT = contextlib.nullcontext()  # reusable, and free to enter on every micro-batch


class Precision:
    """``mode``: ``"32"`` (default), ``"bf16"`` (autocast on CPU or GPU) or ``"16"`` (CUDA, GradScaler)."""

    def __init__(self, mode: str | int = "32", device: torch.device | str = "cpu"):
        mode = str(mode)
        if mode not in MODES:
            raise ConfigError(f"trainer.precision must be one of {', '.join(MODES)}, got {mode!r}")
        self.device = torch.device(device)
        if mode == "16" and self.device.type != "cuda":
            raise ConfigError("trainer.precision=16 needs a CUDA device (fp16 GradScaler); use "
                              "trainer.precision=bf16 on CPU")
        self.mode = mode
        self.dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(mode)
        self.scalers: dict[str, torch.amp.GradScaler] = {}

    @property
    def handles_overflow(self) -> bool:
        return self.mode == "16"

    def autocast(self):
        if self.dtype is None:
            return _NO_CONTEXT
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def float_logits(self, module: nn.Module) -> nn.Module:
        """``module`` whose output is cast to float32 under mixed precision (itself under float32)."""
        return module if self.dtype is None else FloatOutput(module)

    def _scaler(self, net: Network) -> torch.amp.GradScaler:
        scaler = self.scalers.get(net.name)
        if scaler is None:
            scaler = self.scalers[net.name] = torch.amp.GradScaler(self.device.type)
        return scaler

    def backward(self, net: Network, loss: torch.Tensor) -> None:
        if self.mode == "16":
            self._scaler(net).scale(loss).backward()
        else:
            loss.backward()

    def step(self, net: Network) -> None:
        if self.mode == "16":
            scaler = self._scaler(net)
            scaler.step(net.optimizer)
            scaler.update()
        else:
            net.optimizer.step()

    def unscaled_norm(self, net: Network, norm: torch.Tensor) -> torch.Tensor:
        if self.mode == "16":
            return norm / self._scaler(net).get_scale()
        return norm

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "scalers": {k: s.state_dict() for k, s in self.scalers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.mode != "16":
            return  # a run resumed in another precision starts without loss scaling
        for name, scaler_state in state.get("scalers", {}).items():
            scaler = self.scalers.get(name) or torch.amp.GradScaler(self.device.type)
            scaler.load_state_dict(scaler_state)
            self.scalers[name] = scaler


class FloatOutput(nn.Module):
    """Runs ``module`` and returns its output as float32."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.module(*args, **kwargs).float()
