"""Stop when asked, continue as if nothing happened: signals, resume=auto, one run per run dir.

Every run is a real ``scripts/train.py`` subprocess (one torch thread: the straight and the split runs
must run the same kernels to match bit for bit), signalled while it trains.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RING8, ROOT, SCRIPTS, slow

from alttrain.persist.checkpoint import load_checkpoint

RUN = (*RING8, "data.batch_size=64", "model.hidden_dim=16", "trainer.log_every=50", "trainer.sample_every=0",
       "metrics.num_samples=64", "trainer.progress=never", "trainer.checkpoint_every=0")
STEPS = 1500  # long enough to be signalled mid-run, short enough to finish in seconds


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(run_dir, *extra):
    return [sys.executable, str(SCRIPTS / "train.py"), *RUN, f"trainer.max_steps={STEPS}", f"hydra.run.dir={run_dir}",
            *extra]


def start(run_dir, *extra):
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")
    return subprocess.Popen(command(run_dir, *extra), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT), log


def wait_until_training(proc, run_dir, timeout=120):
    """Until the run writes its TensorBoard file (the callbacks' start): the loop is about to run."""
    deadline = time.monotonic() + timeout
    while not list(run_dir.glob("events.out.tfevents.*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be signalled"


def tensors_equal(a, b, path=""):
    if isinstance(a, dict):
        assert list(a) == list(b), path
        return all(tensors_equal(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(tensors_equal(x, y, path) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path
    return True


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    done = subprocess.run(command(run_dir), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=slow),
                                    pytest.param(signal.SIGINT, marks=slow)])
def test_a_signal_stops_at_a_step_boundary_and_resume_auto_ends_bit_identical(tmp_path, straight, signum):
    run_dir = tmp_path / "run"
    proc, log = start(run_dir)
    wait_until_training(proc, run_dir)
    time.sleep(random.uniform(0.2, 1.5))
    proc.send_signal(signum)
    assert proc.wait(timeout=120) == 128 + signum
    log.close()
    output = (tmp_path / "run.log").read_text()
    assert "Traceback" not in output
    stops = [line for line in output.splitlines() if line.startswith("stopped by")]
    assert len(stops) == 1, output[-2000:]
    stopped = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    at = stopped["step"]
    assert 0 < at < STEPS
    assert stops[0].startswith(f"stopped by {signal.Signals(signum).name} at step {at}, checkpoint "
                               f"{run_dir / 'checkpoints' / 'last.pt'}; continue with: python ")
    assert stops[0].endswith(f"hydra.run.dir={run_dir} resume=auto")
    assert not (run_dir / "metrics.json").exists()  # no final evaluation for a run that was told to stop
    # The same command with resume=auto continues it.
    again = subprocess.run(command(run_dir, "resume=auto"), cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {run_dir / 'checkpoints' / 'last.pt'} at step {at}" in again.stdout + again.stderr
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for key in ("models", "optimizers", "trainer", "data", "rng"):
        tensors_equal(final[key], straight[key], key)


SLOW_LOSS = """
import time
from alttrain.games.terms import GeneratorLoss

class SlowGeneratorLoss(GeneratorLoss):
    def __call__(self, game, batch):
        time.sleep(0.2)  # a slow step, so that a second signal arrives while it runs
        return super().__call__(game, batch)
"""


def test_a_second_ctrl_c_stops_at_once_and_the_last_checkpoint_is_intact(tmp_path):
    (tmp_path / "slow_loss.py").write_text(SLOW_LOSS)
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(command(run_dir, "trainer.checkpoint_every=2", "loss.g._target_=slow_loss.SlowGeneratorLoss"),
                            cwd=ROOT, env={**env(), "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
                            stdout=log, stderr=subprocess.STDOUT)
    wait_until_training(proc, run_dir)
    while not (run_dir / "checkpoints" / "last.pt").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)  # inside the same 0.2 s step
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    log.close()
    output = (tmp_path / "run.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if line.startswith(("stopped", "interrupted"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted at step "), output[-2000:]
    assert lines[0].endswith(f"hydra.run.dir={run_dir} resume=auto")
    # Written atomically every 2 steps: whatever the moment, the last one is whole and at an even step.
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] % 2 == 0


def test_resume_auto_starts_fresh_when_there_is_no_checkpoint_and_does_nothing_when_done(tmp_path):
    run_dir = tmp_path / "run"
    short = ("trainer.max_steps=6",)
    # A run killed before its first checkpoint leaves files but no checkpoint: not a dead end.
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("from a run that died\n")
    first = subprocess.run([*command(run_dir, "resume=auto"), *short], cwd=ROOT, env=env(), capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "resume=auto: no checkpoint in" in first.stdout + first.stderr
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 6
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    done = subprocess.run([*command(run_dir, "resume=auto"), *short], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is at step 6 = trainer.max_steps, so the run is complete" in done.stdout + done.stderr
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    # A plain resume= of a dir without a checkpoint still says what to do.
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = subprocess.run(command(tmp_path / "other", f"resume={empty}"), cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and f"error: no checkpoint in directory {empty}" in refused.stderr


@pytest.mark.parametrize("resume", [False, pytest.param(True, marks=slow)])
def test_a_second_run_into_the_same_dir_is_refused_naming_the_holder(tmp_path, resume):
    run_dir = tmp_path / "run"
    if resume:
        first = subprocess.run([*command(run_dir), "trainer.max_steps=4"], cwd=ROOT, env=env(), capture_output=True,
                               text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-2000:]
    extra = ("resume=auto",) if resume else ()
    # The holder must still be running when the second run reaches the lock (which takes seconds of
    # imports): it gets steps enough for minutes and is killed below.
    log = open(tmp_path / "holder.log", "w")
    holder = subprocess.Popen([c if not c.startswith("trainer.max_steps=") else "trainer.max_steps=1000000"
                               for c in command(run_dir, *extra)], cwd=ROOT, env=env(), stdout=log,
                              stderr=subprocess.STDOUT)
    lock = run_dir / ".alttrain.lock"  # the holder writes its pid there once it owns the dir
    deadline = time.monotonic() + 120
    while not (lock.exists() and lock.read_text().strip() == str(holder.pid)):
        assert holder.poll() is None and time.monotonic() < deadline, "the first run never took the run dir"
        time.sleep(0.01)
    second = subprocess.run(command(run_dir, *extra), cwd=ROOT, env=env(), capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: run dir {run_dir} is in use by process {holder.pid}, another alttrain run writing "
                      "there; wait for it to end, or choose another hydra.run.dir"]
    # kill -9 releases the lock with the process: the next start is not stuck.
    holder.kill()
    holder.wait(timeout=60)
    log.close()
    after = subprocess.run([*command(run_dir, "resume=auto"), "trainer.max_steps=4"], cwd=ROOT, env=env(),
                           capture_output=True, text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
