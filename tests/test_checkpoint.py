"""Checkpoint I/O: bit-exact round trips, RNG replay, corruption and code refused, crash safety."""

from __future__ import annotations

import io
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from alttrain.errors import CheckpointError, NonFiniteError
from alttrain.persist.checkpoint import (
    list_step_checkpoints,
    load_checkpoint,
    load_into,
    resolve_checkpoint_path,
    save_checkpoint,
    save_rotating,
)
from alttrain.scale.rng import capture_rng_state, restore_rng_state

REPO_ROOT = Path(__file__).resolve().parents[1]


class Net(nn.Module):
    def __init__(self, hidden: int, skip: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.skip = nn.Linear(2, 1) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return out if self.skip is None else out + self.skip(x)


def make_payload(step: int = 7) -> dict:
    torch.manual_seed(step)
    gen, disc = Net(8), Net(6)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.SGD(disc.parameters(), lr=0.1, momentum=0.9)
    for net, opt in ((gen, opt_g), (disc, opt_d)):
        for param in net.parameters():
            param.grad = torch.randn_like(param)  # a step fills the optimizer state
        opt.step()
        net.body[1].running_mean.normal_()
        net.body[1].num_batches_tracked += step  # an int64 buffer rides along too
    return {
        "models": {"generator": gen.state_dict(), "discriminator": disc.state_dict()},
        "optimizers": {"G": opt_g.state_dict(), "D": opt_d.state_dict()},
        "ema": {"generator": {k: v.clone() for k, v in gen.state_dict().items()}},
        "rng": capture_rng_state(),
        "step": step,
        "counters": {"images": 64 * step, "phase": "D", "half": torch.ones(3, dtype=torch.float16)},
    }


def assert_identical(a, b, where: str = "payload") -> None:
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}.{i}")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def tensor_data_offset(path: Path, member_suffix: str) -> int:
    """File offset of the first byte of a zip member's data (past its local header)."""
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    raw = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def forbid_torch_load(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was reached before the integrity check refused the file")

    monkeypatch.setattr(torch, "load", refuse)


def test_round_trip_is_bit_identical_and_loads_weights_only(tmp_path):
    payload = make_payload()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(payload, path)

    assert_identical(payload, load_checkpoint(path))
    assert_identical(payload, torch.load(path, weights_only=True))
    # Uncompressed members with CRCs are what lets testzip catch damage inside tensor data.
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert zf.testzip() is None

    restored = Net(8)
    load_into(restored, load_checkpoint(path)["models"]["generator"], "generator")
    assert_identical(dict(restored.state_dict()), dict(payload["models"]["generator"]))


def _draw() -> tuple:
    return (
        torch.rand(5), torch.randn(3), np.random.rand(4), np.random.randn(3),
        random.random(), random.gauss(0.0, 1.0),
    )


def _assert_same_draws(a: tuple, b: tuple) -> None:
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert np.array_equal(a[2], b[2]) and np.array_equal(a[3], b[3])
    assert a[4] == b[4] and a[5] == b[5]


def _prime_gaussian_caches() -> None:
    # Both legacy generators make normals in pairs and cache the spare: capture must keep it.
    np.random.randn(1)
    random.gauss(0.0, 1.0)


def test_rng_restore_replays_every_stream():
    _prime_gaussian_caches()
    state = capture_rng_state()
    assert state["numpy"]["has_gauss"] == 1 and state["python"]["gauss_next"] is not None
    first = _draw()
    restore_rng_state(state)
    _assert_same_draws(first, _draw())


def test_rng_state_survives_a_real_file(tmp_path):
    _prime_gaussian_caches()
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    first = _draw()
    torch.manual_seed(123), np.random.seed(5), random.seed(9)  # a fresh process would differ
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    _assert_same_draws(first, _draw())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_rng_survives_a_file_loaded_onto_the_gpu(tmp_path):
    save_checkpoint({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    first = torch.rand(8, device="cuda"), torch.rand(3)
    torch.cuda.manual_seed_all(11), torch.manual_seed(11)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt", map_location="cuda")["rng"])
    second = torch.rand(8, device="cuda"), torch.rand(3)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_restore_rng_rejects_a_foreign_state():
    with pytest.raises(CheckpointError, match="RNG state must hold"):
        restore_rng_state({"torch": torch.get_rng_state()})


def _touch(path: str) -> None:
    Path(path).write_text("pwned")


class Exploit:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


def test_pickled_code_is_refused_and_never_runs(tmp_path):
    marker, path = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save({"models": {"generator": Exploit(marker)}}, path)
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # intact: the refusal below is about the pickle itself

    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "pickled Python objects" in message and "_touch" in message
    assert not marker.exists()

    # The payload is live: an unsafe load does run it, so the assertion above can fail.
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_truncated_file_is_refused_before_torch_load(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(make_payload(), path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    forbid_torch_load(monkeypatch)

    with pytest.raises(CheckpointError, match="corrupted") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="not a zip-format") as err:
        load_checkpoint(empty)
    assert str(empty) in str(err.value)


def test_flipped_byte_in_tensor_data_is_caught(tmp_path, monkeypatch):
    weight = torch.linspace(-1.0, 1.0, 256)
    path = tmp_path / "last.pt"
    save_checkpoint({"models": {"generator": {"body.0.weight": weight}}}, path)
    raw = bytearray(path.read_bytes())
    raw[tensor_data_offset(path, "/data/0") + 4 * 100 + 1] ^= 0x01  # inside element 100
    path.write_bytes(bytes(raw))

    # torch.load alone returns the damaged tensor without complaint...
    silently = torch.load(path, weights_only=True)["models"]["generator"]["body.0.weight"]
    assert not torch.equal(silently, weight)
    assert torch.equal(silently[:100], weight[:100]) and torch.equal(silently[101:], weight[101:])
    # ...load_checkpoint refuses it without ever reaching torch.load.
    forbid_torch_load(monkeypatch)
    with pytest.raises(CheckpointError, match=r"CRC mismatch in \S+/data/0") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_legacy_non_zip_format_is_refused(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"models": {}}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="not a zip-format PyTorch checkpoint"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_first_tensor_and_changes_nothing():
    model = Net(64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_into(model, Net(128).state_dict(), "generator")
    assert str(err.value) == (
        "checkpoint does not fit the generator: tensor 'body.0.weight' has shape (128, 2) in the "
        "checkpoint but (64, 2) in the model; resume with the same model config"
    )
    assert_identical(before, {k: v for k, v in model.state_dict().items()})


def test_missing_and_unexpected_keys_are_named():
    with pytest.raises(CheckpointError) as err:
        load_into(Net(8, skip=True), Net(8).state_dict(), "discriminator")
    assert str(err.value) == (
        "checkpoint does not fit the discriminator: tensor 'skip.weight' is missing from the "
        "checkpoint; resume with the same model config"
    )
    with pytest.raises(CheckpointError) as err:
        load_into(Net(8), Net(8, skip=True).state_dict(), "discriminator")
    assert str(err.value) == (
        "checkpoint does not fit the discriminator: tensor 'skip.weight' is in the checkpoint "
        "but not in the model; resume with the same model config"
    )


@pytest.mark.parametrize(
    "poison, key, counts",
    [
        (lambda p: p["models"]["generator"]["body.0.weight"].view(-1)[3].fill_(float("nan")),
         "models.generator.body.0.weight", "1 NaN and 0 Inf"),
        (lambda p: p["optimizers"]["G"]["state"][0]["exp_avg_sq"].view(-1)[:2].fill_(float("inf")),
         "optimizers.G.state.0.exp_avg_sq", "0 NaN and 2 Inf"),
        (lambda p: p["ema"]["generator"]["body.1.running_var"].fill_(float("-inf")),
         "ema.generator.body.1.running_var", "0 NaN and 8 Inf"),
    ],
)
def test_non_finite_weights_are_refused_and_the_previous_file_kept(tmp_path, poison, key, counts):
    path = tmp_path / "last.pt"
    save_checkpoint(make_payload(), path)
    good = path.read_bytes()
    bad = make_payload(step=8)
    poison(bad)
    with pytest.raises(NonFiniteError) as err:
        save_checkpoint(bad, path)
    assert f"tensor '{key}' holds {counts} values" in str(err.value)
    assert path.read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_non_finite_values_outside_the_weights_are_allowed(tmp_path):
    save_checkpoint({"metrics": {"fid": torch.tensor(float("nan"))}}, tmp_path / "m.pt")
    assert torch.isnan(load_checkpoint(tmp_path / "m.pt")["metrics"]["fid"])


def test_objects_weights_only_cannot_load_are_refused_at_save(tmp_path):
    with pytest.raises(TypeError, match=r"'counters\.hist' is a numpy\.ndarray"):
        save_checkpoint({"counters": {"hist": np.zeros(3)}}, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_crash_during_write_leaves_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(make_payload(step=1), path)
    good = path.read_bytes()
    real_save = torch.save

    def half_then_crash(obj, f, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_then_crash)
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: No space left on device"):
        save_checkpoint(make_payload(step=2), path)
    assert path.read_bytes() == good
    assert load_checkpoint(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]  # the half-written temp was removed


CHILD = textwrap.dedent(
    """
    import io, sys, time, torch
    from pathlib import Path
    from alttrain.persist.checkpoint import save_rotating
    ckpt_dir, paused = Path(sys.argv[1]), Path(sys.argv[2])
    save_rotating({"step": 1, "w": torch.arange(100_000.0)}, ckpt_dir, step=1)
    real_save = torch.save
    def half_then_hang(obj, f, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        f.flush()
        paused.touch()
        time.sleep(120)  # SIGKILLed here, mid-write
    torch.save = half_then_hang
    save_rotating({"step": 2, "w": torch.arange(100_000.0)}, ckpt_dir, step=2)
    """
)


def test_sigkill_mid_write_then_resume_and_rotate(tmp_path):
    run_dir = tmp_path / "run"
    ckpt_dir, paused = run_dir / "checkpoints", tmp_path / "paused"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ckpt_dir), str(paused)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not paused.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert paused.exists(), f"child exited with {child.poll()} before pausing"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

    temps = [n for n in os.listdir(ckpt_dir) if ".tmp-" in n]
    assert len(temps) == 1 and temps[0].startswith(".step_00000002.pt.tmp-")
    assert resolve_checkpoint_path(run_dir) == ckpt_dir / "last.pt"
    assert load_checkpoint(run_dir)["step"] == 1
    assert list_step_checkpoints(ckpt_dir) == [ckpt_dir / "step_00000001.pt"]

    live = ckpt_dir / f".last.pt.tmp-{os.getppid()}-0a1b2c3d"  # a writer that is still running
    live.write_bytes(b"in flight")
    for step in (2, 3, 4):
        save_rotating(make_payload(step), ckpt_dir, step, keep=2)
    visible = sorted(n for n in os.listdir(ckpt_dir) if not n.startswith("."))
    assert visible == ["last.pt", "step_00000003.pt", "step_00000004.pt"]
    assert not (ckpt_dir / temps[0]).exists()  # the killed writer's half file is cleaned up
    assert live.read_bytes() == b"in flight"  # a live process's temp is never touched
    assert (ckpt_dir / "last.pt").read_bytes() == (ckpt_dir / "step_00000004.pt").read_bytes()


def test_rotation_keeps_exactly_keep_step_files_plus_last(tmp_path):
    for step in range(1, 6):
        written = save_rotating(make_payload(step), tmp_path, step, keep=3)
        assert written == tmp_path / f"step_{step:08d}.pt"
    assert sorted(os.listdir(tmp_path)) == [
        "last.pt", "step_00000003.pt", "step_00000004.pt", "step_00000005.pt",
    ]
    assert (tmp_path / "last.pt").read_bytes() == (tmp_path / "step_00000005.pt").read_bytes()
    assert_identical(load_checkpoint(tmp_path / "last.pt"), make_payload(5))

    assert save_rotating(make_payload(6), tmp_path, 6, keep=0) == tmp_path / "last.pt"
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    assert load_checkpoint(tmp_path)["step"] == 6


def test_rotation_after_resuming_from_an_earlier_step_keeps_the_new_branch(tmp_path):
    for age, step in enumerate((10, 20, 30)):
        save_rotating({"step": step}, tmp_path, step, keep=3)
        stamp = 1_000_000_000 + age  # explicit, well-separated write times
        os.utime(tmp_path / f"step_{step:08d}.pt", (stamp, stamp))
    save_rotating({"step": 15}, tmp_path, 15, keep=3)  # resumed from step 10
    save_rotating({"step": 16}, tmp_path, 16, keep=3)
    assert sorted(os.listdir(tmp_path)) == [
        "last.pt", "step_00000015.pt", "step_00000016.pt", "step_00000030.pt",
    ]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 16


def test_resolve_checkpoint_path(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_checkpoint(run_dir)
    assert str(run_dir) in str(err.value) and "\n" not in str(err.value)

    (run_dir / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint in directory") as err:
        resolve_checkpoint_path(run_dir)
    assert str(run_dir / "checkpoints" / "last.pt") in str(err.value)

    save_checkpoint({"step": 3}, run_dir / "checkpoints" / "step_00000003.pt")
    with pytest.raises(CheckpointError, match="step_00000003.pt"):
        resolve_checkpoint_path(run_dir)

    save_rotating({"step": 4}, run_dir / "checkpoints", 4)
    assert resolve_checkpoint_path(run_dir) == run_dir / "checkpoints" / "last.pt"
    assert resolve_checkpoint_path(run_dir / "checkpoints") == run_dir / "checkpoints" / "last.pt"
    single = run_dir / "checkpoints" / "step_00000003.pt"
    assert resolve_checkpoint_path(str(single)) == single
