"""Weights & Biases, offline only: the run is written under ``<run dir>/wandb/`` and nothing is sent.

W&B runs in ``mode="offline"`` whatever the environment says, so it never logs in or opens a
connection; its error reports are switched off too. Logged: the trainer's scalars with their step,
sample pictures (``wandb.Image``), the config and param-group tables as files of the run
(``config.txt``, ``param_groups.txt``), and at train end the flat hyper-parameters as the run's
config and the final metrics (``hparam/<name>``) in its summary. To look at the run on a W&B
server later, upload it from a machine that may: ``wandb sync <run dir>/wandb/offline-run-*``.

The W&B run id is saved in ``<run dir>/wandb_run_id.txt``; a resumed run continues that run (W&B
writes a second ``offline-run-*`` folder with the same id, and ``wandb sync`` joins them). Steps a
crashed run logged past its checkpoint stay in the first folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from pathlib import Path

import torch

from alttrain.callbacks.loggers.base import (
    HParamValue,
    Logger,
    default_run_name,
    import_tracker,
    resumed_run_id,
)
from alttrain.errors import ConfigError

RUN_ID_FILE = "wandb_run_id.txt"


def _import_wandb():
    # Set before the import: W&B reads them when it loads (its error reporter) and again at init.
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    return import_tracker("wandb", "wandb")


class WandB(Logger):
    """Logs one offline W&B run into ``log_dir/wandb``; ``run_name`` ``None`` names it after the run dir."""

    def __init__(self, log_dir: str | Path, project: str = "alttrain", run_name: str | None = None):
        for key, value in (("project", project), ("run_name", run_name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"logger.wandb.{key} must be a non-empty string, got {value!r}")
        self.wandb = _import_wandb()  # also when built without the config: an error before anything is written
        self.log_dir = Path(log_dir)
        self.project, self.run_name = project, run_name or default_run_name(self.log_dir)
        self.run = None

    @classmethod
    def check_installed(cls) -> None:
        _import_wandb()

    def start(self, start_step: int) -> None:
        wandb = self.wandb
        run_id = resumed_run_id(self.log_dir / RUN_ID_FILE, start_step) or uuid.uuid4().hex[:12]
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # console="off": the run does not capture stdout/stderr; create_new: a run of its own, even when the
        # user's code holds another one.
        settings = wandb.Settings(mode="offline", console="off", reinit="create_new", quiet=True)
        self.run = wandb.init(dir=str(self.log_dir), project=self.project, name=self.run_name, id=run_id,
                              resume="allow", settings=settings)
        (self.log_dir / RUN_ID_FILE).write_text(run_id + "\n")

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pixels = image.permute(1, 2, 0).cpu().numpy()  # CHW uint8 -> HWC, what wandb.Image takes
        self.run.log({tag: self.wandb.Image(pixels)}, step=step)

    def log_text(self, tag: str, text: str, step: int) -> None:
        path = Path(self.run.dir) / f"{tag}.txt"
        path.write_text(text)
        self.run.save(str(path), base_path=self.run.dir, policy="now")

    def log_hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int) -> None:
        self.run.config.update(dict(hparams), allow_val_change=True)  # a resumed run may change max_steps
        self.run.summary.update(dict(metrics))

    def close(self) -> None:
        self._finish(0)

    def abort(self) -> None:
        self._finish(1)

    def _finish(self, exit_code: int) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
