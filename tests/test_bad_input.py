"""Bad input through the real command line: one readable error line, a non-zero exit, nothing lost.

Every case runs ``scripts/train.py`` (or ``scripts/sample.py``) as a user would, pointed at the
run dir of an earlier successful run, and then checks that run's files are byte-identical, with
the same modification times, and that nothing was added or deleted.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import RING8, ROOT, SCRIPTS, compose_config, slow

from alttrain.run.app import train

EARLIER = (*RING8, "data.batch_size=64", "model.hidden_dim=32", "trainer.max_steps=4",
           "trainer.checkpoint_every=2", "trainer.sample_every=2", "trainer.log_every=2", "metrics.num_samples=16",
           "trainer.progress=never")
HYDRA = "hydra"  # expected exit: Hydra's own multi-line message and exit code 1
GROUPS = "optim.discriminator.param_groups="
SCHEDULER = "optim.generator.scheduler="
COSINE = SCHEDULER + "{_target_: torch.optim.lr_scheduler.CosineAnnealingLR, _partial_: true, T_max: 3}"

# (id, script, arguments, fragments the error line must contain). In arguments and fragments,
# {run} is the earlier run's dir and {bad} the folder of broken files.
CASES = [
    ("new top-level key", "train", ["+unknown_key=1"], ["unknown config key 'unknown_key'"]),
    ("new trainer key", "train", ["+trainer.bogus=1"], ["unknown config key 'trainer.bogus'", "max_steps"]),
    ("typo without +", "train", ["trainer.max_stepz=5"],
     ["Could not override 'trainer.max_stepz'. To append to your config use +trainer.max_stepz=5"]),
    ("unknown group option", "train", ["data=nope"],
     ["Could not find 'data/nope'", "Available options in 'data': cifar10, ", "digits, grid25"]),
    ("override grammar", "train", ["trainer.max_steps=[1"], ["no viable alternative at input '[1'"]),
    ("seed beyond 64 bits", "train", ["seed=1180591620717411303424"],
     ["seed must be an integer in [-2**63, 2**64), got 1180591620717411303424"]),
    ("max_steps zero", "train", ["trainer.max_steps=0"], ["trainer.max_steps must be an integer >= 1, got 0"]),
    ("max_steps not a number", "train", ["trainer.max_steps=abc"], ["trainer.max_steps", "'abc'"]),
    ("n_critic negative", "train", ["trainer.n_critic=-1"], ["trainer.n_critic must be an integer >= 1, got -1"]),
    ("batch size zero", "train", ["data.batch_size=0"], ["data.batch_size must be an integer >= 1, got 0"]),
    ("negative learning rate", "train", ["optim.generator.optimizer.lr=-1"],
     ["optim.generator.optimizer.lr must be a number > 0"]),
    ("negative group learning rate", "train", [GROUPS + "[{name: all, params: ['*'], lr: -1}]"],
     ["optim.discriminator.param_groups[0].lr must be a number > 0"]),
    ("group option typo", "train", [GROUPS + "[{name: all, params: ['*'], lrr: 0.1}]"],
     ["'lrr'", "'all'", "discriminator", "lr"]),
    ("pattern matches nothing", "train", [GROUPS + "[{name: all, params: ['nothing.*']}]"],
     ["pattern 'nothing.*'", "matches no trainable parameter", "head.weight"]),
    ("overlapping groups", "train", [GROUPS + "[{name: a, params: ['*']}, {name: b, params: ['head.*']}]"],
     ["'head.weight' is matched by two param groups", "'a' and 'b'"]),
    ("uncovered parameters", "train", [GROUPS + "[{name: head, params: ['head.*']}]"],
     ["not covered", "body.0.weight"]),
    ("scheduler ReduceLROnPlateau", "train",
     [SCHEDULER + "{_target_: torch.optim.lr_scheduler.ReduceLROnPlateau, _partial_: true}"],
     ["optim.generator.scheduler is ReduceLROnPlateau", "needs a metric", "CosineAnnealingLR"]),
    ("scheduler argument typo", "train", [COSINE, "+optim.generator.scheduler.T_maxx=3"],
     ["unknown config key 'optim.generator.scheduler.T_maxx'", "T_max"]),
    ("scheduler target not a scheduler", "train", [SCHEDULER + "{_target_: torch.optim.SGD, _partial_: true}"],
     ["optim.generator.scheduler must be a torch.optim.lr_scheduler.LRScheduler", "torch.optim.sgd.SGD"]),
    ("scheduler points decreasing", "train",
     [SCHEDULER + "{_target_: alttrain.schedules.PiecewiseLinearLR, _partial_: true, points: [[9, 1.0], [3, 0.1]]}"],
     ["optim.generator.scheduler: PiecewiseLinearLR points[1] has step 3 after step 9", "strictly increase"]),
    ("model size out of range", "train", ["model.hidden_dim=0"], ["model.generator", "hidden_dim"]),
    ("image model on 2-D points", "train", ["model=dcgan"], ["model.generator", "image_size", "sample shape (2,)"]),
    ("batch larger than the data set", "train", ["experiment=digits", "data.batch_size=5000"],
     ["data.batch_size=5000", "1797 items"]),
    ("missing data root", "train", ["data=mnist"], ["data.root is required"]),
    ("data root does not exist", "train", ["data=mnist", "data.root={bad}/no_such_dir"],
     ["MNIST not found under {bad}/no_such_dir"]),
    ("on_nan option", "train", ["trainer.on_nan=maybe"], ["trainer.on_nan must be one of raise, skip"]),
    ("fp16 without CUDA", "train", ["trainer.precision=16"], ["trainer.precision=16", "CUDA"]),
    ("cuda without CUDA", "train", ["device=cuda"], ["device=cuda", "no CUDA device"]),
    ("fresh start on a taken run dir", "train", [], ["run dir {run} already holds a run", "resume={run}"]),
    ("resume path missing", "train", ["resume={bad}/missing.pt"], ["checkpoint {bad}/missing.pt does not exist"]),
    ("resume truncated", "train", ["resume={bad}/truncated.pt"], ["{bad}/truncated.pt is corrupted"]),
    ("resume byte flipped", "train", ["resume={bad}/flipped.pt"], ["{bad}/flipped.pt is corrupted", "CRC"]),
    ("resume pickled code", "train", ["resume={bad}/evil.pt"], ["{bad}/evil.pt contains pickled Python objects"]),
    ("resume not a training checkpoint", "train", ["resume={bad}/weights.pt"],
     ["{bad}/weights.pt is not an alttrain training checkpoint"]),
    ("resume a different model size", "train", ["resume={run}", "trainer.max_steps=8", "model.hidden_dim=16"],
     ["{run}/checkpoints/last.pt", "tensor 'body.0.weight' has shape (32, 2)", "(16, 2)"]),
    ("resume with other data settings", "train", ["resume={run}", "trainer.max_steps=8", "data.batch_size=32"],
     ["{run}/checkpoints/last.pt", "batch_size=64", "batch_size=32"]),
    ("resume on another data set", "train", ["resume={run}", "trainer.max_steps=8", "experiment=grid25",
                                             "data.batch_size=64"],
     ["{run}/checkpoints/last.pt: the checkpoint was trained on ring8 and this run's data is grid25",
      "data=ring8"]),
    ("resume adding a scheduler", "train", ["resume={run}", "trainer.max_steps=8", COSINE],
     ["{run}/checkpoints/last.pt", "holds none for it", "resume with the original optim.generator.scheduler"]),
    ("resume without raising max_steps", "train", ["resume={run}"],
     ["trainer.max_steps=4", "already at step 4", "trainer.max_steps=<more than 4>"]),
    ("optimizer for no network", "train", ["+optim.genrator.x=3"],
     ["optim.genrator names no network (the networks are generator, discriminator); did you mean optim.generator?"]),
    ("model entry without a target", "train", ["+model.encoder.hidden=3"],
     ["model.encoder has no _target_, so it is no network"]),
    ("network without an optimizer", "train", ["+model.encoder={_target_: alttrain.models.MLPEncoder}"],
     ["network 'encoder' has no optimizer: add optim.encoder"]),
    ("phase of an unknown network", "train", ["trainer.phases.G.network=gen"],
     ["trainer.phases.G trains 'gen', which is not a network; the networks are generator, discriminator"]),
    ("phase with network and networks", "train", ["+trainer.phases.G.networks=[generator]"],
     ["trainer.phases.G needs exactly one of network: <name> or networks: [<name>, ...]"]),
    ("loss term naming an unknown network", "train", ["+loss.g.discriminator=critic"],
     ["phase 'G' (loss.g): it uses network 'critic', which is not a network of this run"]),
    ("sampler not a network", "train", ["sampler=gen"], ["sampler is 'gen', which is not a network"]),
    ("log_every zero", "train", ["trainer.log_every=0"], ["trainer.log_every must be an integer >= 1, got 0"]),
    ("phase weight zero", "train", ["+trainer.phases.G.weight=0"],
     ["trainer.phases.G.weight must be a finite number > 0, got 0"]),
    ("phase weight negative", "train", ["+trainer.phases.D.weight=-2.5"],
     ["trainer.phases.D.weight must be a finite number > 0, got -2.5"]),
    ("old module path still resolves", "train", [SCHEDULER + "{_target_: alttrain.schedules.PiecewiseLinearLR, "
                                                 "_partial_: true, points: [[3, 1.0], [1, 0.1]]}"],
     ["PiecewiseLinearLR points[1] has step 1 after step 3"]),
    ("sample pickled code", "sample", ["checkpoint={bad}/evil.pt"], ["{bad}/evil.pt contains pickled Python objects"]),
    ("sample byte flipped", "sample", ["checkpoint={bad}/flipped.pt"], ["{bad}/flipped.pt is corrupted"]),
    ("sample not a training checkpoint", "sample", ["checkpoint={bad}/weights.pt"],
     ["{bad}/weights.pt is not an alttrain training checkpoint"]),
]


def base_overrides(args: list[str]) -> list[str]:
    """The earlier run's overrides, less the ring8 MLP settings when a case switches to another model."""
    switches = any(a.startswith(("model=", "experiment=")) for a in args)
    ring8_only = ("model.hidden_dim=", "model.depth=", "~trainer.phases.R1")
    return [o for o in EARLIER if not (switches and o.startswith(ring8_only))]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: bytes and mtime for files, mtime for directories."""
    out = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        out[str(path.relative_to(root))] = (path.read_bytes() if path.is_file() else None, stat.st_mtime_ns)
    return out


class Evil:
    """Unpickling this runs ``touch <marker>``: a checkpoint that must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def flip_a_tensor_byte(data: bytes) -> bytes:
    """The first stored tensor's first byte, flipped (found through the zip's local header)."""
    import struct
    import zipfile
    from io import BytesIO

    with zipfile.ZipFile(BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if "/data/" in i.filename)
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    flipped = bytearray(data)
    flipped[start] ^= 0x01
    return bytes(flipped)


@pytest.fixture(scope="module")
def earlier(tmp_path_factory):
    """An earlier successful run, broken checkpoint files beside it, and the run's snapshot."""
    run_dir = tmp_path_factory.mktemp("earlier_run")
    train(compose_config(*EARLIER), run_dir, EARLIER)
    bad = tmp_path_factory.mktemp("bad_files")
    good = (run_dir / "checkpoints" / "last.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(good[: len(good) // 2])
    (bad / "flipped.pt").write_bytes(flip_a_tensor_byte(good))
    torch.save({"models": Evil(bad / "PAYLOAD_RAN")}, bad / "evil.pt")
    torch.save({"weight": torch.zeros(3)}, bad / "weights.pt")
    return run_dir, bad, snapshot(run_dir)


# Each case costs a fresh interpreter (seconds); these variants repeat a check another case makes through
# the same code path, and run with ALTTRAIN_SLOW_TESTS=1.
VARIANTS = {"new trainer key", "n_critic negative", "batch size zero", "negative group learning rate",
            "scheduler argument typo", "scheduler points decreasing", "batch larger than the data set",
            "cuda without CUDA", "resume byte flipped", "resume with other data settings", "log_every zero",
            "phase weight negative", "sample byte flipped", "phase with network and networks",
            "max_steps not a number", "resume truncated", "phase weight zero", "missing data root"}
assert VARIANTS <= {c[0] for c in CASES}


@pytest.mark.parametrize("name, script, args, fragments",
                         [pytest.param(*c, marks=slow) if c[0] in VARIANTS else c for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_loses_nothing(earlier, tmp_path, name, script, args, fragments):
    run_dir, bad, before = earlier
    if name.startswith("cuda") or name.startswith("fp16"):
        if torch.cuda.is_available():
            pytest.skip("needs a machine without CUDA")
    fill = lambda s: s.replace("{run}", str(run_dir)).replace("{bad}", str(bad))
    args = [fill(a) for a in args]
    if script == "train":
        command = [SCRIPTS / "train.py", *base_overrides(args), *args, f"hydra.run.dir={run_dir}"]
    else:
        command = [SCRIPTS / "sample.py", *args, f"out={tmp_path / 'samples.png'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([sys.executable, *map(str, command)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=180)

    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    if fragments[0] == HYDRA:
        assert proc.returncode == 1, proc.stderr
        message, fragments = proc.stderr, fragments[1:]
    else:
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr
        message = errors[0]
    for fragment in map(fill, fragments):
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not (bad / "PAYLOAD_RAN").exists(), "the pickled payload ran"
    assert not (tmp_path / "samples.png").exists()
    after = snapshot(run_dir)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"the earlier run's files changed, appeared or vanished: {changed}"


def test_hydra_full_error_shows_the_traceback(earlier):
    run_dir, _, before = earlier
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *EARLIER, "+unknown_key=1",
                           f"hydra.run.dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HYDRA_FULL_ERROR": "1"}, timeout=180)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError: unknown config key 'unknown_key'" in proc.stderr
    assert snapshot(run_dir) == before
