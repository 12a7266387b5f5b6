"""What every logger backend takes: scalars, images, text, hyper-parameters with final metrics.

:class:`~alttrain.callbacks.loggers.collector.LogCallback` gathers what the trainer and the other
callbacks report and hands the same values to every backend, so TensorBoard, CSV, MLflow and W&B
see one run the same way. A backend opens its files or run on first use (a start that fails on bad
input writes nothing) and is closed at the end or on an exception.

Backends are config: each entry of the ``logger`` group (``conf/logger/``) is a ``_target_`` node
whose class takes the run dir as its first argument, ``log_dir``, which the builder supplies.
Trackers that keep their own run (MLflow, W&B) save its id in the run dir, so a resumed run
continues the same tracker run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

HParamValue = str | int | float | bool


class Logger:
    """A backend; override what it can show. ``start_step`` is where a resumed run continues."""

    @classmethod
    def check_installed(cls) -> None:
        """Raise :class:`ConfigError` if a package the backend needs is missing (config validation asks)."""

    def start(self, start_step: int) -> None:
        """Called once before anything is logged (``start_step`` > 0 on resume)."""

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None: ...

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        """``image``: a CHW ``uint8`` tensor."""

    def log_text(self, tag: str, text: str, step: int) -> None: ...

    def log_hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None:
        """Called instead of :meth:`close` when training raised (a tracker may mark the run failed)."""
        self.close()


def flat_hparams(hparams: Mapping[str, Any]) -> dict[str, HParamValue]:
    """``hparams`` with ``None`` as ``"None"``; any other non-scalar is a :class:`ConfigError`."""
    from alttrain.errors import ConfigError

    out = {}
    for key, value in hparams.items():
        if value is None:
            value = "None"  # TensorBoard's HParams cannot store None
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"hyper-parameter '{key}' must be a str, int, float or bool for the loggers, "
                              f"got {type(value).__name__}; flatten it or convert it to a string")
        out[str(key)] = value
    return out


def import_tracker(module: str, extra: str):
    """``import module`` (a tracker's package), or one :class:`ConfigError` line saying how to install it."""
    import importlib

    from alttrain.errors import ConfigError

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f'logger={extra} needs the {module} package: pip install "alttrain[{extra}]"') from None


def default_run_name(log_dir: Path) -> str:
    """The run dir's last two path parts (``2026-11-24/10-00-00``): what Hydra's run dirs tell apart."""
    return "/".join(Path(log_dir).resolve().parts[-2:])


def resumed_run_id(path: Path, start_step: int) -> str | None:
    """The tracker's run id saved in ``path`` by the run being resumed, or ``None`` (fresh run, or none saved)."""
    if start_step and path.is_file():
        return path.read_text().strip() or None
    return None
