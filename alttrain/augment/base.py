"""What every augmentation is: a callable ``x -> x`` with its own random stream and a checkpointable state."""

from __future__ import annotations

from typing import Any

import torch

from alttrain.augment.ops import RandomStream
from alttrain.errors import CheckpointError


class Augmentation:
    """Base of the augmentations: ``__call__`` maps ``(N, C, H, W)`` images to augmented ones.

    ``seed`` is the run's seed and ``rank`` this process's: every rank augments its own batch with
    its own numbers. The state (``state_dict``) is the same on every rank, so rank 0's checkpoint
    resumes them all.
    """

    kind = "augmentation"

    def __init__(self, seed: int = 0, rank: int = 0, device: torch.device | str = "cpu"):
        self.stream = RandomStream(seed, rank, device)
        self.device = self.stream.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "calls": self.stream.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("kind")
        if saved != self.kind:
            raise CheckpointError(f"the checkpoint's augmentation is {saved}, this run's is {self.kind}; resume with "
                                  f"augment={saved}, or start a new run")
        self.stream.calls = int(state["calls"])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.settings().items())})"

    def settings(self) -> dict[str, Any]:
        return {}
