"""MLflow, in a local file store inside the run dir: nothing leaves the machine.

Tracking URI ``file:<run dir>/mlruns``; one MLflow run per alttrain run, in experiment ``experiment``.
It holds the trainer's scalars as metrics with their step, each sample picture as a PNG artifact
(``samples/step_XXXXXXXX.png``), the config and param-group tables as text artifacts (``config.txt``,
``param_groups.txt``), and at train end the flat hyper-parameters as params and the final metrics
(``hparam/<name>``). Browse it with::

    MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri outputs/2026-11-24/10-00-00/mlruns

(MLflow 3 keeps the file store in maintenance mode and asks for that variable to open one.)

The MLflow run id is saved in ``<run dir>/mlflow_run_id.txt``; a resumed run continues that run.
MLflow cannot delete metric points, so on resume the points a crashed run logged past the
checkpoint stay, beside the resumed run's points for the same steps (MLflow's params are
write-once: a hyper-parameter changed on resume, such as ``trainer.max_steps``, is recorded as the
tag ``resumed.<name>`` instead). MLflow's telemetry is switched off before it is imported.
"""

from __future__ import annotations

import logging
import os
import re
import time
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

log = logging.getLogger("alttrain")
RUN_ID_FILE = "mlflow_run_id.txt"
BATCH = 100  # params per log_batch call: MLflow's limit (metrics allow 1000)


def _import_mlflow():
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # read when mlflow is imported: no usage reports are sent
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"   # MLflow 3 refuses a file store without it
    return import_tracker("mlflow", "mlflow")


class MLflow(Logger):
    """Logs one MLflow run into ``log_dir/mlruns``; ``run_name`` ``None`` names it after the run dir."""

    def __init__(self, log_dir: str | Path, experiment: str = "alttrain", run_name: str | None = None):
        for key, value in (("experiment", experiment), ("run_name", run_name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"logger.mlflow.{key} must be a non-empty string, got {value!r}")
        self.check_installed()  # also when built without the config: an error before anything is written
        self.log_dir = Path(log_dir)
        self.experiment, self.run_name = experiment, run_name or default_run_name(self.log_dir)
        self.client = None
        self.run_id: str | None = None

    @classmethod
    def check_installed(cls) -> None:
        _import_mlflow()

    @property
    def tracking_uri(self) -> str:
        return self.store.resolve().as_uri()

    @property
    def store(self) -> Path:
        return self.log_dir / "mlruns"

    def start(self, start_step: int) -> None:
        from mlflow.tracking import MlflowClient

        self.client = client = MlflowClient(tracking_uri=self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(self.experiment)
        run_id = resumed_run_id(self.log_dir / RUN_ID_FILE, start_step)
        if run_id is not None and not self._exists(run_id):
            log.warning("mlflow: run %s named in %s is not in %s; starting a new MLflow run", run_id, RUN_ID_FILE,
                        self.store)
            run_id = None
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=self.run_name,
                                    tags={"alttrain.run_dir": str(self.log_dir.resolve())})
            run_id = run.info.run_id
            (self.log_dir / RUN_ID_FILE).write_text(run_id + "\n")
        self.run_id = run_id

    def _exists(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def log_scalars(self, scalars: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(name), float(value), now, step) for name, value in scalars.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def log_image(self, tag: str, image: torch.Tensor, step: int) -> None:
        pixels = image.permute(1, 2, 0).cpu().numpy()  # CHW uint8 -> HWC, what MLflow's PNG writer takes
        self.client.log_image(self.run_id, pixels, artifact_file=f"{tag}/step_{step:08d}.png")

    def log_text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}.txt")

    def log_hparams(self, hparams: Mapping[str, HParamValue], metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params  # a resumed run's params, as strings
        values = {metric_key(k): str(v) for k, v in hparams.items()}
        params = [Param(k, v) for k, v in values.items() if k not in logged]
        changed = [RunTag(f"resumed.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
        if changed:
            log.info("mlflow: %d hyper-parameter(s) changed on resume, kept as resumed.* tags: %s", len(changed),
                     ", ".join(t.key[len("resumed."):] for t in changed))
        for i in range(0, max(len(params), len(changed)), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH], tags=changed[i:i + BATCH])
        self.log_scalars(metrics, step)

    def close(self) -> None:
        self._end("FINISHED")

    def abort(self) -> None:
        self._end("FAILED")

    def _end(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None


def metric_key(name: str) -> str:
    """``name`` with the characters MLflow refuses in keys replaced by ``_`` (slash-grouped names pass)."""
    return re.sub(r"[^\w\-. :/]", "_", name)
