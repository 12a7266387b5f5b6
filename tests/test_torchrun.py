"""Two gloo processes under torchrun: a graceful stop that all ranks agree on, resumed bit-exactly, and a
stuck rank that the others report in one line instead of waiting for half an hour."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import RING8, ROOT, SCRIPTS

from alttrain.persist.checkpoint import load_checkpoint

RUN = (*RING8, "data.batch_size=64", "model.hidden_dim=16", "trainer.log_every=50", "trainer.sample_every=0",
       "metrics.num_samples=64", "trainer.progress=never", "trainer.checkpoint_every=0", "trainer.max_steps=1200")


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(run_dir, *extra):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(SCRIPTS / "train.py"), *RUN, f"hydra.run.dir={run_dir}", *extra]


def workers(parent_pid):
    """The training processes torchrun started (its children), by rank: pids are no guide to the order, they
    wrap around on a busy machine."""
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) != parent_pid:
                    continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            except OSError:
                continue
            found[int(environ[b"RANK"])] = int(pid)
    return found


def wait_for_events(proc, run_dir, timeout=180):
    deadline = time.monotonic() + timeout
    while not list(run_dir.glob("events.out.tfevents.*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run did not start training"
        time.sleep(0.02)


def test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resume_auto_is_exact(tmp_path):
    steps = "trainer.max_steps=600"
    straight = subprocess.run(torchrun(tmp_path / "straight", steps), cwd=ROOT, env=env(), capture_output=True,
                              text=True, timeout=400)
    assert straight.returncode == 0, straight.stderr[-3000:]
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    # A process group of its own, as a batch system's job step: SIGTERM reaches torchrun and both ranks.
    proc = subprocess.Popen(torchrun(run_dir, steps), cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_for_events(proc, run_dir)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    log.close()
    output = (tmp_path / "run.log").read_text()
    stops = [line for line in output.splitlines() if line.startswith("stopped by SIGTERM")]
    assert len(stops) == 1, output[-3000:]  # rank 0 says it, once
    at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < at < 600 and f"at step {at}," in stops[0]
    resumed = subprocess.run(torchrun(run_dir, steps, "resume=auto"), cwd=ROOT, env=env(), capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 600
    for key in ("models", "optimizers", "rng_ranks"):
        for (name, x), (_, y) in zip(flat(a[key], key), flat(b[key], key)):
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, name


def flat(tree, prefix):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from flat(v, f"{prefix}.{k}")
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, tree


def test_a_stopped_rank_is_reported_by_the_others_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(torchrun(run_dir, "trainer.collective_timeout=5", "trainer.max_steps=100000"),
                            cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_events(proc, run_dir)
        time.sleep(1.0)  # some steps into training
        ranks = workers(proc.pid)
        assert sorted(ranks) == [0, 1], ranks
        os.kill(ranks[1], signal.SIGSTOP)  # rank 1 hangs
        deadline = time.monotonic() + 120
        while "collective_timeout" not in (tmp_path / "run.log").read_text():
            assert time.monotonic() < deadline, "no rank reported the stuck one"
            time.sleep(0.2)
    finally:
        for pid in workers(proc.pid).values():
            os.kill(pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    # (Rank 1, let go again at the end, may report its own wait before it is killed: rank 0's line is the one.)
    output = (tmp_path / "run.log").read_text()
    lines = [line for line in output.splitlines() if line.startswith("error: rank 0")]
    assert len(lines) == 1, output[-3000:]
    assert lines[0].startswith("error: rank 0 waited trainer.collective_timeout=5 s for the other processes at step ")
    assert "one of them is stuck, stopped or slower than that" in lines[0]


@pytest.mark.skipif(os.environ.get("ALTTRAIN_SLOW_TESTS") != "1", reason="twenty torchrun runs: slow")
def test_twenty_ddp_runs_in_a_row_all_exit_zero(tmp_path):
    """A clean run must not abort at teardown (a scheduler would mark the job failed)."""
    for i in range(20):
        done = subprocess.run(torchrun(tmp_path / f"run{i}", "debug=default"), cwd=ROOT, env=env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"run {i}: {done.stderr[-3000:]}"


def test_resuming_on_another_number_of_processes_is_refused_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    one = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *RUN, "trainer.max_steps=4",
                          f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    two = subprocess.run(torchrun(run_dir, "trainer.max_steps=8", "resume=auto"), cwd=ROOT, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert two.returncode != 0
    lines = {line for line in (two.stdout + two.stderr).splitlines() if line.startswith("error:")}
    assert lines == {f"error: {run_dir / 'checkpoints' / 'last.pt'}: the checkpoint was written by 1 process(es) "
                     "and this run has 2: resume with the same number (torchrun --nproc_per_node=1); each process's "
                     "data shard and the effective batch (data.batch_size x processes) depend on it"}, two.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


@pytest.mark.parametrize("message", ["[../gloo/transport/tcp/pair.cc:534] Timed out waiting 5000ms for recv",
                                     "Application timeout caused pair closure",
                                     "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9)"])
def test_each_way_gloo_and_nccl_word_a_timeout_is_one_line(message):
    """The stuck-rank test meets these at random (the wait ends in a collective, or in backward's all-reduce)."""
    from alttrain.run.app import collective_failure

    assert collective_failure(RuntimeError(message), rank_one_at_step_75()) == (
        "rank 1 waited trainer.collective_timeout=5 s for the other processes at step 75: one of them is stuck, "
        "stopped or slower than that (rank 0's evaluations count); find it, or raise trainer.collective_timeout")


def test_a_lost_peer_is_its_own_line_and_other_errors_are_left_alone():
    from alttrain.run.app import collective_failure

    trainer = rank_one_at_step_75()
    lost = collective_failure(RuntimeError("Connection closed by peer [127.0.0.1]:5555"), trainer)
    assert lost.startswith("rank 1 lost its connection to another process at step 75")
    assert collective_failure(RuntimeError("CUDA out of memory"), trainer) is None


def rank_one_at_step_75():
    """What collective_failure reads of a trainer under torchrun: its rank, the timeout, the step."""
    from types import SimpleNamespace

    return SimpleNamespace(replicas=SimpleNamespace(ctx=SimpleNamespace(rank=1), timeout_s=5.0),
                           state=SimpleNamespace(step=75))


WRITER = """
import sys, time
from alttrain.run.cli import say
while time.time() < float(sys.argv[2]):  # both start together, as ranks failing on the same check do
    pass
for i in range(5000):
    say("error: " + sys.argv[1] * 300)
"""


def test_error_lines_of_two_ranks_sharing_unbuffered_stderr_never_interleave():
    """torchrun's ranks share the job's stderr; with PYTHONUNBUFFERED a ``print`` of a line is two writes, and
    two ranks reporting the same failure spliced their lines together."""
    read_fd, write_fd = os.pipe()  # one pipe for both, as torchrun's children write into the job's stderr
    start = str(time.time() + 3)
    ranks = [subprocess.Popen([sys.executable, "-c", WRITER, letter, start], env=env(), stderr=write_fd)
             for letter in "ab"]
    os.close(write_fd)
    with os.fdopen(read_fd) as shared:
        lines = shared.read().splitlines()
    assert all(rank.wait(timeout=120) == 0 for rank in ranks)
    assert sorted(set(lines)) == ["error: " + "a" * 300, "error: " + "b" * 300]
    assert len(lines) == 10000
