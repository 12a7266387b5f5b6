"""Mixed precision: autocast for the forward, and one GradScaler per optimizer for fp16.

Sharing one GradScaler between G and D couples them: an overflow in D's backward shrinks the scale
G's update is unscaled with, and ``update()`` runs once for two steps. Each network gets its own
(keyed by its name); a phase that trains several networks on one loss backpropagates that loss once,
so its networks share a scaler keyed by their joined names (``gen_ab+gen_ba``). The scalers travel in
checkpoints.

Weights, gradients and optimizer states stay float32; autocast runs the matrix products and
convolutions in bf16/fp16. The discriminator's logits are cast back to float32
(:meth:`Precision.float_logits`) before any loss sees them, so softplus, squares and means are
computed in full precision: a bf16 loss keeps only about three significant digits. Every network's
output is cast (:meth:`Precision.float_outputs`), whichever network a loss reads logits, samples or
codes from; a float32 copy of a bf16 tensor is exact, so a network fed by another one sees the same
values under autocast.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from alttrain.checks import check_choice
from alttrain.errors import ConfigError

MODES = ("32", "bf16", "16")
_NO_CONTEXT = contextlib.nullcontext()  # reusable, and free to enter on every micro-batch


class Precision:
    """``mode``: ``"32"`` (default), ``"bf16"`` (autocast on CPU or GPU) or ``"16"`` (CUDA, GradScaler)."""

    def __init__(self, mode: str | int = "32", device: torch.device | str = "cpu"):
        mode = str(check_choice("trainer.precision", mode, MODES))
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

    def float_outputs(self, module: nn.Module) -> nn.Module:
        """``module`` whose outputs are cast to float32 under mixed precision (itself under float32)."""
        return module if self.dtype is None else FloatOutput(module)

    def _scaler(self, key: str) -> torch.amp.GradScaler:
        scaler = self.scalers.get(key)
        if scaler is None:
            scaler = self.scalers[key] = torch.amp.GradScaler(self.device.type)
        return scaler

    def backward(self, key: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled by the GradScaler ``key`` under fp16)."""
        if self.mode == "16":
            self._scaler(key).scale(loss).backward()
        else:
            loss.backward()

    def step(self, key: str, optimizers: list[torch.optim.Optimizer]) -> None:
        """Step ``optimizers`` (one update of a phase); under fp16 through the GradScaler ``key``."""
        if self.mode == "16":
            scaler = self._scaler(key)
            for optimizer in optimizers:
                scaler.step(optimizer)
            scaler.update()
        else:
            for optimizer in optimizers:
                optimizer.step()

    def unscaled_norm(self, key: str, norm: torch.Tensor) -> torch.Tensor:
        if self.mode == "16":
            return norm / self._scaler(key).get_scale()
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
    """Runs ``module`` and returns its output as float32 (each tensor of a tuple or list output)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _to_float(self.module(*args, **kwargs))


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float(o) for o in out)
    return out
