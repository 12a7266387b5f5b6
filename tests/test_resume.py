"""Resuming is exact: N steps straight and N/2 + resume + N/2 end with bit-identical state.

Runs go through the entry the CLI uses (Hydra compose -> alttrain.run.app.train), and as real
``scripts/train.py`` subprocesses for the run killed with SIGKILL.
"""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RING8, ROOT, SCRIPTS, after_the_event_files_second, assert_identical, compose_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alttrain.persist.checkpoint import (
    assert_finite,
    list_step_checkpoints,
    load_checkpoint,
)
from alttrain.run.app import train

TINY = ("trainer.log_every=1", "trainer.sample_every=0", "metrics.num_samples=16", "trainer.progress=never")
EXPERIMENTS = {
    "ring8": (*RING8, "data.batch_size=64", "model.hidden_dim=32"),
    # DCGAN with BatchNorm in both networks: running statistics must resume too.
    "digits": ("experiment=digits", "data.batch_size=16", "model.base_width=8", "model.latent_dim=16"),
}
# The same image run with an EMA generator (its average and sample count resume) under bf16 autocast.
EXPERIMENTS["digits_ema_bf16"] = (*EXPERIMENTS["digits"], "trainer.ema.half_life_samples=64",
                                  "trainer.ema.rampup=0.05", "trainer.precision=bf16")
N = 8  # steps of the straight run; the split run stops at N // 2
# Both networks on PiecewiseLinearLR schedules whose lr changes on both sides of step N/2.
PIECEWISE = "{_target_: alttrain.scale.schedules.PiecewiseLinearLR, _partial_: true, points: %s}"
EXPERIMENTS["ring8_schedules"] = (*EXPERIMENTS["ring8"],
                                  "optim.generator.scheduler=" + PIECEWISE % "[[2, 1.0], [6, 0.25]]",
                                  "optim.discriminator.scheduler=" + PIECEWISE % "[[0, 0.5], [8, 1.0]]")
# The shipped grid25 experiment, shrunk: fused Adam, an R1 phase every 4 steps, an EMA generator and
# schedules moved inside the N steps.
EXPERIMENTS["grid25"] = ("experiment=grid25", "data.batch_size=64", "model.hidden_dim=32",
                         "optim.generator.scheduler.points=[[2,1.0],[6,0.25]]",
                         "optim.discriminator.scheduler.points=[[0,0.5],[8,1.0]]")
# A class-conditional run (labels in the batches and in the prior's draws) and the three-network BiGAN,
# whose EG phase trains two networks at once.
EXPERIMENTS["digits_cond"] = ("experiment=digits_cond", "data.batch_size=16", "model.base_width=8",
                              "model.latent_dim=16")
# The hand-written loop's math (one G forward per step, trainer.reuse_fakes, the default) and the one of
# a forward per update.
EXPERIMENTS["ring8_separate_fakes"] = (*EXPERIMENTS["ring8"], "trainer.reuse_fakes=false")
EXPERIMENTS["bigan"] = ("experiment=bigan_ring8", "data.batch_size=64", "model.hidden_dim=16",
                        *(f"optim.{net}.scheduler.points=[[2,1.0],[6,0.25]]"
                          for net in ("generator", "encoder", "discriminator")))


def run(run_dir, *overrides):
    overrides = (*TINY, *overrides)
    return train(compose_config(*overrides), run_dir, overrides)


def last(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_same_training_state(a, b):
    optional = [key for key in ("ema", "schedulers") if key in a]
    assert optional == [key for key in ("ema", "schedulers") if key in b]
    for key in ("models", "optimizers", "trainer", "data", "precision", "rng", *optional):
        compared = assert_identical(a[key], b[key], key)
        if key in ("models", "optimizers", "ema"):
            assert compared > 0, f"nothing compared under {key}"


def scalar_tags(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc.Tags()["scalars"]


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One straight N-step run per experiment, checkpointing at N/2 too (made on first use)."""
    made = {}

    def get(name):
        if name not in made:
            run_dir = tmp_path_factory.mktemp(f"straight_{name}")
            metrics = run(run_dir, *EXPERIMENTS[name], f"trainer.max_steps={N}", f"trainer.checkpoint_every={N // 2}")
            made[name] = run_dir, metrics
        return made[name]

    return get


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_half_then_resume_with_max_steps_raised_equals_a_straight_run(tmp_path, straight, name):
    straight_dir, straight_metrics = straight(name)
    # First half: a run that ends at N/2 (the train-end checkpoint, after samples and metrics ran).
    run(tmp_path, *EXPERIMENTS[name], f"trainer.max_steps={N // 2}", "trainer.checkpoint_every=0")
    half = last(tmp_path)
    assert half["trainer"]["step"] == N // 2
    after_the_event_files_second(tmp_path)
    # Second half: the same run dir, max_steps raised.
    metrics = run(tmp_path, *EXPERIMENTS[name], f"trainer.max_steps={N}", "trainer.checkpoint_every=0",
                  f"resume={tmp_path}")
    resumed, reference = last(tmp_path), last(straight_dir)
    assert resumed["trainer"]["step"] == N
    assert_same_training_state(resumed, reference)
    assert metrics == straight_metrics
    # The resumed half really trained: the weights moved on from the N/2 checkpoint.
    assert not all(torch.equal(t, half["models"]["generator"][k]) for k, t in resumed["models"]["generator"].items())
    if "schedulers" in reference:
        # The lrs really changed across the resume boundary (and the optimizers' lrs matched above).
        for net, sched in reference["schedulers"].items():
            assert sched["last_epoch"] == N and half["schedulers"][net]["last_epoch"] == N // 2
            lrs = [ckpt["optimizers"][net]["param_groups"][0]["lr"] for ckpt in (half, resumed)]
            assert lrs[0] != lrs[1], f"{net}'s lr did not change across the resume"
    # TensorBoard shows one continuous curve, equal to the straight run's, for every scalar but the clock.
    # (The first half's own end wrote metric/* and hparam/* at N/2, which the straight run has not.)
    tags = [t for t in scalar_tags(straight_dir) if not t.startswith(("time/", "metric/", "hparam/"))]
    assert {"loss/D", "grad_norm/generator/all", "lr/generator/all", "lr/discriminator/all"} <= set(tags)
    for tag in tags:
        assert scalars(tmp_path, tag) == scalars(straight_dir, tag), tag
    assert [s for s, _ in scalars(tmp_path, "loss/D")] == list(range(N))


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_resume_from_a_step_file_into_a_new_run_dir(tmp_path, straight, name):
    straight_dir, _ = straight(name)
    step_file = straight_dir / "checkpoints" / f"step_{N // 2:08d}.pt"
    run(tmp_path, *EXPERIMENTS[name], f"trainer.max_steps={N}", f"trainer.checkpoint_every={N // 2}",
        f"resume={step_file}")
    assert_same_training_state(last(tmp_path), last(straight_dir))


def test_the_checkpoint_holds_everything_a_resume_needs(straight):
    straight_dir, _ = straight("digits")
    ckpt = last(straight_dir)
    assert set(ckpt) >= {"trainer", "models", "optimizers", "data", "precision", "rng", "config", "meta"}
    assert ckpt["trainer"] == {"step": N, "phase_updates": {"D": N, "G": N}, "samples": N * 16,
                               "skipped": {"D": 0, "G": 0}}
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["data"]["epoch"] == 0 and ckpt["data"]["cursor"] == N  # one real batch per D update
    # Buffers travel too: G's BatchNorm statistics, D's spectral-norm power-iteration vectors.
    assert "running_mean" in " ".join(ckpt["models"]["generator"])
    assert "parametrizations.weight.0._u" in " ".join(ckpt["models"]["discriminator"])
    assert "trainer:\n  max_steps: 8" in ckpt["config"]
    for opt in ckpt["optimizers"].values():
        assert opt["state"], "Adam moments must be saved"
    assert_finite(ckpt, "last.pt")


def subprocess_env():
    # One thread: the straight and the resumed processes must run the same kernels to match bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


def train_command(run_dir, *overrides):
    return [sys.executable, str(SCRIPTS / "train.py"), *EXPERIMENTS["ring8"], *TINY, "trainer.log_every=50",
            "trainer.max_steps=200", "trainer.checkpoint_every=5", f"hydra.run.dir={run_dir}", *overrides]


def test_killed_with_sigkill_mid_run_then_resumed_equals_a_straight_run(tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    reference_log = open(tmp_path / "straight.log", "w")  # a file, not a pipe: a full pipe would block it
    reference = subprocess.Popen(train_command(straight_dir), cwd=ROOT, env=subprocess_env(),
                                 stdout=reference_log, stderr=subprocess.STDOUT)
    victim = subprocess.Popen(train_command(killed_dir), cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last_pt = killed_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last_pt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL

    survivor = load_checkpoint(last_pt)  # whatever moment the kill hit, last.pt is whole
    killed_at = survivor["trainer"]["step"]
    assert 0 < killed_at < 200 and killed_at % 5 == 0
    assert_finite(survivor, last_pt)

    resumed = subprocess.run(train_command(killed_dir, f"resume={killed_dir}"), cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {last_pt} at step {killed_at}" in resumed.stdout + resumed.stderr
    assert reference.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    reference_log.close()
    assert_same_training_state(last(killed_dir), last(straight_dir))
    # Rotation kept the newest three step files beside last.pt.
    names = sorted(p.name for p in list_step_checkpoints(killed_dir / "checkpoints"))
    assert names == ["step_00000190.pt", "step_00000195.pt", "step_00000200.pt"]
