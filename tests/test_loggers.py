"""Logger backends and extra callbacks chosen by config, each tracker's output read back with its own reader.

One tiny ring8 run writes TensorBoard, CSV, MLflow and W&B at once; it is then resumed from its step-2
checkpoint, as after a crash past that checkpoint. A user's callback, from a module on PYTHONPATH, runs
in scripts/train.py beside the shipped lr_monitor. CSV is read with
pandas, MLflow with MlflowClient on its file store, W&B's offline run with ``wandb leet inspect --json``
(W&B's reader of its .wandb log), TensorBoard with EventAccumulator.
"""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import RING8, ROOT, SCRIPTS, compose_config, env_with_pythonpath
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata

from alttrain.callbacks.loggers import CSV, MLflow, TensorBoard, WandB
from alttrain.callbacks.loggers.csv import purge_after
from alttrain.errors import ConfigError
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.run.app import train
from alttrain.run.config import validate_config
from alttrain.run.loggers import build_callbacks, build_loggers

TINY = ("debug=default", "trainer.max_steps=4", "trainer.log_every=2", "trainer.sample_every=2",
        "trainer.checkpoint_every=2", "metrics.num_samples=64", "model.hidden_dim=8", "trainer.progress=never")
ALL = "logger=[tensorboard,csv,mlflow,wandb]"
PER_STEP = {"loss/D", "loss/G", "score/real", "score/fake", "score/fake_for_G", "lr/generator/all",
            "lr/discriminator/all", "grad_norm/generator/all", "phase_updates/D", "time/steps_per_sec"}
USER_CALLBACK = '''
from alttrain.engine.hooks import Callback

class StepLog(Callback):
    """Appends each completed step to a file; its count travels in checkpoints."""

    def __init__(self, path, every=1):
        self.path, self.every, self.count = path, every, 0

    def on_step_end(self, trainer):
        if trainer.state.step % self.every == 0:
            self.count += 1
            with open(self.path, "a") as f:
                f.write(f"{trainer.state.step}\\n")

    def state_dict(self):
        return {"count": self.count}
'''


def train_script(run_dir, *overrides, env=None):
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *RING8, *TINY, *overrides,
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The first run (steps 0-3, checkpoints at 2 and 4), a copy of it, and the same dir resumed from step 2."""
    run_dir, first = tmp_path_factory.mktemp("run"), tmp_path_factory.mktemp("first") / "copy"
    metrics = train_with(run_dir, ALL)
    shutil.copytree(run_dir, first, symlinks=True)
    train_with(run_dir, ALL, f"resume={run_dir / 'checkpoints' / 'step_00000002.pt'}")
    return SimpleNamespace(first=first, run_dir=run_dir, metrics=metrics)


def train_with(run_dir, *overrides):
    overrides = (*RING8, *TINY, *overrides)
    return train(compose_config(*overrides), run_dir, list(overrides))


def mlflow_client(run_dir):
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # as for `mlflow ui` on this store
    return MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())


@functools.lru_cache
def wandb_records(offline_run):
    """The records of an offline run's .wandb log, as W&B's own inspector prints them."""
    (log,) = offline_run.glob("run-*.wandb")
    # Offline and without error reports, the inspector sends nothing either.
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false"}
    proc = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def pixels(path):
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


# -- what each backend holds --------------------------------------------------------------------------


def test_csv_holds_every_scalar_at_its_log_step(runs):
    first, first_metrics = runs.first, runs.metrics
    df = pd.read_csv(first / "scalars.csv")
    assert list(df.columns) == ["step", "name", "value"]
    assert PER_STEP <= set(df.name)
    for name in PER_STEP:
        assert df[df.name == name].step.tolist() == [0, 2], name
    assert df[df.name == "phase_updates/D"].value.tolist() == [1.0, 3.0]
    final = df[df.name.str.startswith("hparam/")]
    assert set(final.step) == {4}
    assert dict(zip(final.name, final.value)) == {f"hparam/{k}": v for k, v in first_metrics.items()}


def test_tensorboard_and_csv_write_the_same_values(runs):
    first = runs.first
    acc = EventAccumulator(str(first), size_guidance={"scalars": 0})
    acc.Reload()
    df = pd.read_csv(first / "scalars.csv")
    for name in PER_STEP - {"time/steps_per_sec"}:
        tb = [(e.step, e.value) for e in acc.Scalars(name)]
        rows = df[df.name == name]
        assert tb == [(s, float(np.float32(v))) for s, v in zip(rows.step, rows.value)], name


def test_tensorboard_writes_each_log_step_as_one_event(runs):
    # One event per log step carrying every scalar (a tenth of the cost of an event per value).
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    events = [e for f in sorted(runs.first.glob("events.out.tfevents.*"))
              for e in EventFileLoader(str(f)).Load() if e.HasField("summary")]
    with_loss = [e for e in events if any(v.tag == "loss/D" for v in e.summary.value)]
    assert [e.step for e in with_loss] == [0, 2]
    for event in with_loss:
        assert PER_STEP <= {v.tag for v in event.summary.value}


def test_custom_scalars_layout_puts_losses_scores_and_lrs_on_one_screen(runs):
    run_dir = runs.run_dir
    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert metadata.CONFIG_SUMMARY_TAG in acc.PluginTagToContent(metadata.PLUGIN_NAME)
    proto = acc.Tensors(metadata.CONFIG_SUMMARY_TAG)[-1].tensor_proto
    layout = layout_pb2.Layout.FromString(proto.string_val[0])
    assert [c.title for c in layout.category] == ["alttrain"]  # one screen
    tags = acc.Tags()["scalars"]
    # TensorBoard's plugin shows a chart's tags by regex.match; which of this run's tags does each chart show?
    shown = {chart.title.split(" (")[0]: {t for t in tags if any(re.match(r, t) for r in chart.multiline.tag)}
             for chart in layout.category[0].chart}
    assert shown["losses"] == {"loss/D", "loss/G"}
    assert shown["D scores"] == {"score/real", "score/fake", "score/fake_for_G"}
    assert shown["learning rates"] == {"lr/generator/all", "lr/discriminator/all"}
    assert shown["gradient norms"] == {"grad_norm/generator/all", "grad_norm/discriminator/all"}


def test_mlflow_run_holds_params_metrics_images_and_config(runs):
    first, first_metrics = runs.first, runs.metrics
    client = mlflow_client(first)
    (experiment,) = [e for e in client.search_experiments() if e.name == "alttrain"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == (first / "mlflow_run_id.txt").read_text().strip()
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["trainer.max_steps"], params["model.hidden_dim"], params["data._target_"]) == \
        ("4", "8", "alttrain.data.ring8")
    assert not any(k.startswith(("logger.", "callbacks.")) for k in params)  # how a run is watched is no param
    history = client.get_metric_history(run.info.run_id, "loss/D")
    assert [m.step for m in history] == [0, 2]
    assert {k: run.data.metrics[f"hparam/{k}"] for k in first_metrics} == first_metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "samples")]
    assert images == ["samples/step_00000002.png", "samples/step_00000004.png"]
    local = client.download_artifacts(run.info.run_id, "samples/step_00000002.png", str(first / "dl"))
    assert np.array_equal(pixels(local), pixels(first / "samples" / "step_00000002.png"))
    config = client.download_artifacts(run.info.run_id, "config.txt", str(first / "dl"))
    assert OmegaConf.create(open(config).read()).trainer.max_steps == 4


def test_wandb_offline_run_holds_scalars_images_config_and_summary(runs):
    first, first_metrics = runs.first, runs.metrics
    (offline,) = (first / "wandb").glob("offline-run-*")
    records = wandb_records(offline)
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    assert run["run_id"] == (first / "wandb_run_id.txt").read_text().strip() and run["project"] == "alttrain"
    rows = {r["history"]["step"].get("num", 0): r["history"]["item"] for r in records if r["type"] == "history"}
    assert sorted(rows) == [0, 2, 4]
    assert rows[0]["phase_updates/D"] == 1 and rows[2]["phase_updates/D"] == 3
    assert PER_STEP <= set(rows[0]) and PER_STEP <= set(rows[2])
    assert rows[2]["samples._type"] == "image-file"
    image = offline / "files" / rows[2]["samples.path"]
    assert np.array_equal(pixels(image), pixels(first / "samples" / "step_00000002.png"))
    config = {}
    for r in records:
        if r["type"] == "config":
            config.update(r["config"]["update"])
    assert (config["trainer.max_steps"], config["model.hidden_dim"]) == (4, 8)
    summary = {}
    for r in records:
        if r["type"] == "summary":
            summary.update(r["summary"]["update"])
    assert {k: summary[f"hparam/{k}"] for k in first_metrics if np.isfinite(first_metrics[k])} == \
        {k: v for k, v in first_metrics.items() if np.isfinite(v)}
    text = OmegaConf.create((offline / "files" / "config.txt").read_text())
    assert text.trainer.max_steps == 4 and list(text.logger) == ["tensorboard", "csv", "mlflow", "wandb"]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]


# -- resume -------------------------------------------------------------------------------------------


def test_resume_drops_csv_rows_past_the_checkpoint(runs):
    first, run_dir = runs.first, runs.run_dir
    before, after = pd.read_csv(first / "scalars.csv"), pd.read_csv(run_dir / "scalars.csv")
    # Everything up to step 2 is kept as written; the first run's step 4 (its final metrics) is gone,
    # replaced by the resumed run's, so each name appears once at step 4.
    kept = before[before.step <= 2].reset_index(drop=True)
    pd.testing.assert_frame_equal(after.iloc[:len(kept)], kept)
    assert after[after.step == 4].name.value_counts().max() == 1
    assert len(after[after.step == 4]) == len(before[before.step == 4])
    # The resumed run logs step 2 again: an exact resume writes the same values.
    again = after.iloc[len(kept):]
    assert again.step.min() == 2
    step2 = before[before.step == 2].set_index("name").value
    for name in PER_STEP - {"time/steps_per_sec"}:
        assert again[(again.step == 2) & (again.name == name)].value.tolist() == [step2[name]], name


def test_resume_continues_the_same_mlflow_and_wandb_runs(runs):
    first, run_dir = runs.first, runs.run_dir
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    assert run_id == (first / "mlflow_run_id.txt").read_text().strip()
    client = mlflow_client(run_dir)
    (experiment,) = [e for e in client.search_experiments() if e.name == "alttrain"]
    (run,) = client.search_runs([experiment.experiment_id])  # no second MLflow run
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    # MLflow cannot delete points: the first run's step 2 stays beside the resumed run's.
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss/D")) == [0, 2, 2]
    assert run.data.tags["resumed.resume"].endswith("step_00000002.pt")  # params are write-once
    (before,) = (first / "wandb").glob("offline-run-*")
    offline = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and before.name in offline  # W&B writes a resumed offline run beside the first
    (resumed,) = [run_dir / "wandb" / name for name in offline if name != before.name]
    ids = [r["run"]["run_id"] for o in (before, resumed) for r in wandb_records(o) if r["type"] == "run"]
    assert ids == [(run_dir / "wandb_run_id.txt").read_text().strip()] * 2


def test_csv_rows_are_in_the_file_as_soon_as_their_step_is_logged(tmp_path):
    logger = CSV(tmp_path)
    logger.start(0)
    logger.log_scalars({"loss/D": 0.1, "loss/G": 1 / 3}, 0)
    # Read while the logger still holds the file open: what a killed run would leave behind.
    df = pd.read_csv(tmp_path / "scalars.csv")
    assert df.values.tolist() == [[0, "loss/D", 0.1], [0, "loss/G", 1 / 3]]  # repr: exact floats
    logger.close()


def test_csv_purge_drops_rows_past_the_step_and_a_torn_line(tmp_path):
    path = tmp_path / "scalars.csv"
    path.write_text("step,name,value\n0,loss/D,1.5\n2,loss/D,1.25\n3,\"a,b\",0.5\n4,loss/D,1.0\n5,loss/")
    path.chmod(0o644)
    purge_after(path, 3)
    assert path.read_text() == "step,name,value\n0,loss/D,1.5\n2,loss/D,1.25\n3,\"a,b\",0.5\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["scalars.csv"]  # no temporary file left


# -- config -------------------------------------------------------------------------------------------


def test_every_logger_option_composes_and_builds(tmp_path):
    cfg = compose_config(*RING8, ALL)
    loggers = build_loggers(cfg, tmp_path)
    assert [type(x) for x in loggers] == [TensorBoard, CSV, MLflow, WandB]
    assert list(tmp_path.iterdir()) == []  # building writes nothing: backends open at train start
    assert build_loggers(compose_config(*RING8, "logger=[]"), tmp_path) == []
    assert [type(x) for x in build_loggers(compose_config(*RING8, "logger=csv"), tmp_path)] == [CSV]


@pytest.mark.parametrize("override, message", [
    ("+logger.csv.filenme=x.csv", "unknown config key 'logger.csv.filenme': alttrain.callbacks.loggers.csv.CSV "
                                  "takes filename"),
    ("+logger.csv.log_dir=/tmp", "unknown config key 'logger.csv.log_dir'"),  # the run dir is alttrain's to give
    ("+logger.mine=3", "logger.mine must be a config node with a _target_"),
    ("+callbacks.mine={_target_: alttrain.callbacks.lr_monitor.LRMonitor, evry: 2}",
     "unknown config key 'callbacks.mine.evry'"),
    ("+callbacks.mine={_target_: nowhere.Mine}", "callbacks.mine._target_ 'nowhere.Mine' cannot be imported"),
])
def test_typos_in_logger_and_callback_entries_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(compose_config(*RING8, "logger=[tensorboard,csv]", override))


def test_entries_that_build_the_wrong_kind_of_object_are_refused(tmp_path):
    cfg = compose_config(*RING8, "logger.tensorboard._target_=alttrain.callbacks.lr_monitor.LRMonitor",
                         "~logger.tensorboard.custom_scalars", "+logger.tensorboard.every=2")
    with pytest.raises(ConfigError, match="cannot build logger.tensorboard"):
        build_loggers(cfg, tmp_path)  # LRMonitor takes no log_dir
    cfg = compose_config(*RING8, "+callbacks.mine={_target_: alttrain.callbacks.loggers.csv.CSV, log_dir: x}")
    with pytest.raises(ConfigError, match=r"callbacks.mine._target_ .*CSV builds a CSV, which is not an "
                                          r"alttrain.engine.hooks.Callback"):
        build_callbacks(cfg)


def test_a_missing_tracker_package_is_one_error_line_and_writes_nothing(tmp_path):
    shim = tmp_path / "shim" / "mlflow"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text('raise ImportError("No module named \'mlflow\'")\n')
    out = tmp_path / "run"
    proc = train_script(out, "logger=[tensorboard,mlflow]", env=env_with_pythonpath(tmp_path / "shim"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == \
        'error: logger=mlflow needs the mlflow package: pip install "alttrain[mlflow]"'
    assert not out.exists() or not any(out.iterdir())


# -- callbacks group ----------------------------------------------------------------------------------


def test_a_user_callback_from_pythonpath_runs_and_is_checkpointed(tmp_path):
    (tmp_path / "my_callbacks.py").write_text(USER_CALLBACK)
    out, steps = tmp_path / "run", tmp_path / "steps.txt"
    user = f"+callbacks.mine={{_target_: my_callbacks.StepLog, path: '{steps}'}}"
    proc = train_script(out, "logger=csv", "callbacks=lr_monitor", "callbacks.lr_monitor.every=2", user,
                        env=env_with_pythonpath(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert steps.read_text().split() == ["1", "2", "3", "4"]
    # Saved after the callback ran at each step end: the checkpoint comes last.
    assert load_checkpoint(out / "checkpoints" / "step_00000002.pt")["callbacks"]["StepLog"] == {"count": 2}
    assert load_checkpoint(out / "checkpoints" / "last.pt")["callbacks"]["StepLog"] == {"count": 4}
    # The shipped lr_monitor, chosen beside it: at train start and every 2 steps.
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lr at step")]
    assert lines == [f"lr at step {s}: lr/generator/all=0.001 lr/discriminator/all=0.001" for s in (0, 2, 4)]
