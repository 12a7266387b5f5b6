"""The SLURM job script requeues itself when its time runs out and the requeued job continues bit-exactly.

There is no SLURM here: ``srun`` and ``scontrol`` are small stand-ins put first on PATH (srun runs the
command as task 0 of 1, scontrol records a requeue), and the test plays SLURM's part by sending the
warning signal (SIGUSR1) to the training process, as ``#SBATCH --signal=USR1@180`` does.
"""

import os
import signal
import subprocess
import sys
import time

import torch
from conftest import RING8, ROOT

from alttrain.persist.checkpoint import load_checkpoint
from alttrain.scale.processes import slurm_environment

SCRIPT = ROOT / "scripts" / "slurm" / "train.sbatch"
ARGS = (*RING8, "data.batch_size=64", "model.hidden_dim=16", "trainer.log_every=50", "trainer.sample_every=0",
        "metrics.num_samples=64", "trainer.progress=never", "trainer.checkpoint_every=0", "trainer.max_steps=1200")
FAKE_SRUN = "#!/bin/bash\nexport SLURM_NTASKS=1 SLURM_PROCID=0 SLURM_LOCALID=0\nexec \"$@\"\n"
FAKE_SCONTROL = ("#!/bin/bash\nif [ \"$1\" = requeue ]; then echo \"requeue $2\" >> \"$SCONTROL_LOG\"; "
                 "elif [ \"$1\" = show ]; then echo localhost; fi\n")


def fake_slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    python_dir = os.path.dirname(sys.executable)  # `python` in the script is this interpreter
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{python_dir}{os.pathsep}{os.environ['PATH']}",
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "OMP_NUM_THREADS": "1",
            "SCONTROL_LOG": str(tmp_path / "scontrol.log"), "ALTTRAIN_RUN_DIR": str(tmp_path / "outputs" / "4242")}


def training_pid(script_pid):
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
                cmd = open(f"/proc/{pid}/cmdline").read()
            except OSError:
                continue
            if int(stat[1]) == script_pid and "train.py" in cmd:
                return int(pid)
    return None


def test_the_job_script_stops_on_the_warning_signal_requeues_and_continues_exactly(tmp_path):
    env = fake_slurm(tmp_path)
    run_dir = tmp_path / "outputs" / "4242"
    straight = subprocess.run(["bash", str(SCRIPT), *ARGS], cwd=ROOT, env={**env, "ALTTRAIN_RUN_DIR": str(tmp_path / "s")},
                              capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    job = subprocess.Popen(["bash", str(SCRIPT), *ARGS], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while not list(run_dir.glob("events.out.tfevents.*")):
        assert job.poll() is None and time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.02)
    time.sleep(0.5)
    os.kill(training_pid(job.pid), signal.SIGUSR1)  # SLURM's warning before the time limit
    output, _ = job.communicate(timeout=180)
    assert job.returncode == 138, output[-3000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    at = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < at < 1200 and f"stopped by SIGUSR1 at step {at}" in output
    # The requeued job: the same script, the same arguments.
    again = subprocess.run(["bash", str(SCRIPT), *ARGS], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    a = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "s" / "checkpoints" / "last.pt")
    for net in ("generator", "discriminator"):
        for name, tensor in a["models"][net].items():
            assert torch.equal(tensor, b["models"][net][name]), name


def test_srun_tasks_get_torchruns_variables():
    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[03-06]",
           "SLURM_JOB_ID": "123456"}
    assert slurm_environment(env) == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu03",
                                      "MASTER_PORT": "23456"}
    assert slurm_environment({**env, "WORLD_SIZE": "8"}) == {}  # torchrun set them: left alone
    assert slurm_environment({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == {}  # one task: no process group
