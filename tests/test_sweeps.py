"""Sweeps and launchers for real: Hydra's Optuna sweeper and the submitit launcher running local processes."""

import json
import math
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, SCRIPTS

from alttrain.persist.checkpoint import load_checkpoint
from alttrain.run.objective import DIRECTIONS, objective_value

QUICK = ("debug=default", "trainer.max_steps=6", "trainer.progress=never", "metrics.num_samples=64",
         "model.base_width=8", "trainer.sample_every=0")


GRID = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: grid
metrics:
  objective: fid
hydra:
  sweeper:
    direction: minimize
    n_trials: 3
    params:
      optim.generator.optimizer.lr: choice(1e-4, 1e-3, 1e+30)
"""


def multirun(sweep_dir, *args):
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_three_trial_optuna_sweep_minimises_fid_and_survives_a_diverged_trial(tmp_path):
    # Grid over three lrs, one absurd enough to diverge: its trial reports +inf instead of ending the sweep.
    sweep, own = tmp_path / "sweep", tmp_path / "my_configs"
    (own / "hparams_search").mkdir(parents=True)  # a user's own search, beside the shipped ones
    (own / "hparams_search" / "lr_grid.yaml").write_text(GRID)
    proc = multirun(sweep, "--config-dir", str(own), "hparams_search=lr_grid", *QUICK)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("warning: this trial diverged (non-finite") == 1
    fids = {}
    for trial in sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()):
        assert (trial / ".hydra" / "config.yaml").is_file()  # every trial wrote its run dir
        lr = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())["optim"]["generator"]["optimizer"]["lr"]
        metrics = trial / "metrics.json"
        fids[lr] = json.loads(metrics.read_text())["fid"] if metrics.exists() else math.inf
        if metrics.exists():
            assert load_checkpoint(trial / "checkpoints" / "last.pt")["step"] == 6
    assert len(fids) == 3 and fids[1e30] == math.inf
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(fids, key=fids.get)
    assert results["best_params"] == {"optim.generator.optimizer.lr": best}
    assert results["best_value"] == pytest.approx(fids[best])


def test_a_sweeper_pointed_the_wrong_way_is_refused_before_any_trial(tmp_path):
    proc = multirun(tmp_path / "sweep", "hparams_search=digits_optuna", *QUICK, "hydra.sweeper.direction=maximize")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        "error: hydra.sweeper.direction=maximize but metrics.objective=fid is better when lower: set "
        "hydra.sweeper.direction=minimize"], proc.stderr[-3000:]
    assert not list((tmp_path / "sweep").glob("*/checkpoints"))


def test_two_jobs_through_the_submitit_launcher_as_local_processes(tmp_path):
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "hydra/launcher=submitit_local", "experiment=ring8", *QUICK[:4], "model.hidden_dim=8",
                    "seed=0,1")
    assert proc.returncode == 0, proc.stderr[-4000:]
    seeds = {}
    for job in ("0", "1"):
        ckpt = load_checkpoint(sweep / job / "checkpoints" / "last.pt")
        seeds[job] = yaml.safe_load((sweep / job / ".hydra" / "config.yaml").read_text())["seed"]
        assert ckpt["step"] == 6 and (sweep / job / "metrics.json").is_file()
    assert seeds == {"0": 0, "1": 1}
    # submitit ran them as processes of their own, each with its log.
    logs = list((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) >= 2


def test_the_objective_has_a_direction_and_a_worst_value():
    assert DIRECTIONS["fid"] == "minimize" and DIRECTIONS["mode_score"] == "maximize"
    assert objective_value({"fid": 3.5, "modes": 8}, "auto") == 3.5
    assert objective_value({"modes": 8, "mode_score": 96.0}, "auto") == 96.0
    assert objective_value({}, "fid", diverged=True) == math.inf
    assert objective_value({}, "mode_score", diverged=True) == -math.inf
    assert objective_value({}, "auto", diverged=True, sweeper_direction="maximize") == -math.inf
