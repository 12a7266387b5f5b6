"""The disk says no: a full disk, a read-only run dir, a read-only checkpoints/ on resume.

Each is one ``error:`` line and exit code 2, and the files already there stay as they were. The
filesystems are real: small tmpfs mounts (a full one, a read-only one), which needs the right to mount;
without it the tests are skipped with that reason.
"""

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import RING8, ROOT, SCRIPTS

from alttrain.persist.checkpoint import load_checkpoint

ROOM = 16 * 1024  # bytes left free: a checkpoint of these tiny networks takes more
RUN = (*RING8, "debug=default", "model.hidden_dim=8", "trainer.progress=never", "metrics.num_samples=32",
       "trainer.sample_every=0", "trainer.log_every=2")


def mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a test filesystem here: {done.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """``make(size)``: a fresh tmpfs of ``size`` mounted under tmp_path; all unmounted at the end."""
    mounted = []

    def make(size: str, *options: str) -> Path:
        point = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        mount("-t", "tmpfs", "-o", ",".join([f"size={size}", *options]), "tmpfs", str(point))
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def train(run_dir, *extra):
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_error(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_survives(tmpfs):
    disk = tmpfs("3m")
    run_dir = disk / "run"
    first = train(run_dir, "trainer.max_steps=2", "trainer.checkpoint_every=0")
    assert first.returncode == 0, first.stderr[-3000:]
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    # Leave room for the run's small files (its config, its event file) but not for one more checkpoint.
    pad = disk / "pad"
    pad.write_bytes(b"\0" * ROOM)
    subprocess.run(["dd", "if=/dev/zero", f"of={disk / 'filler'}", "bs=4k", "count=100000"], capture_output=True)
    pad.unlink()
    line = one_error(train(run_dir, "trainer.max_steps=4", "trainer.checkpoint_every=0", "resume=auto"))
    assert line.startswith(f"error: cannot write checkpoint {run_dir / 'checkpoints'}/")
    assert "No space left on device" in line and "the previous checkpoint is intact" in line
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == good
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp left


def test_a_read_only_run_dir_is_refused_at_the_start(tmpfs):
    disk = tmpfs("1m", "ro")
    line = one_error(train(disk / "run"))
    assert line.startswith("error: ") and str(disk) in line


def test_a_read_only_checkpoints_dir_on_resume_is_refused_before_training(tmp_path):
    run_dir = tmp_path / "run"
    assert train(run_dir, "trainer.max_steps=2").returncode == 0
    ckpt = run_dir / "checkpoints"
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    mount("--bind", str(ckpt), str(ckpt))
    try:
        mount("-o", "remount,ro,bind", str(ckpt))
        line = one_error(train(run_dir, "trainer.max_steps=6", "resume=auto"))
    finally:
        subprocess.run(["umount", "-l", str(ckpt)], capture_output=True)
    assert line == (f"error: the checkpoints dir {ckpt} is not writable ({ckpt} is read-only for this user); "
                    "choose a writable hydra.run.dir")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_a_run_dir_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "a_file"
    afile.write_text("keep me\n")
    line = one_error(train(afile))
    assert line == (f"error: cannot create the directory {afile}: a file of that name is in the way; choose "
                    "another hydra.run.dir")
    assert afile.read_text() == "keep me\n"


def test_a_yaml_syntax_error_in_a_user_config_names_the_file_line_and_column(tmp_path):
    (tmp_path / "experiment").mkdir()
    broken = tmp_path / "experiment" / "mine.yaml"
    broken.write_text("# @package _global_\ntrainer:\n  max_steps: [1, 2\n")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "--config-dir", str(tmp_path),
                           "experiment=mine", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert one_error(proc) == (f"error: YAML syntax error in {broken}, line 4, column 1: while parsing a flow "
                               "sequence: expected ',' or ']', but got '<stream end>'; fix that file")
