"""Shared test set-up: paths, a Hydra composer, and one torch thread per test process."""

import os
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SCRIPTS = ROOT / "scripts"
# experiment=ring8 reduced to the plain D/G toy the tests reason about (the shipped experiment adds
# an R1 phase, a third layer, lr schedules and an EMA generator for its mode-coverage results).
RING8 = ("experiment=ring8", "~trainer.phases.R1", "model.depth=2", "trainer.ema.half_life_samples=null",
         "trainer.ema.rampup=null", "optim.generator.scheduler=null", "optim.discriminator.scheduler=null")

# pytest-xdist runs one process per core: more threads per process would only contend, and so would
# the subprocesses the tests start (entry points, torchrun ranks), which inherit this environment.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Variants of a capability the default suite already covers once (another signal, another way to
# corrupt a file): ALTTRAIN_SLOW_TESTS=1 runs them too.
slow = pytest.mark.skipif(os.environ.get("ALTTRAIN_SLOW_TESTS") != "1",
                          reason="a variant of a covered case: ALTTRAIN_SLOW_TESTS=1")


def env_with_pythonpath(*dirs, **extra: str) -> dict[str, str]:
    """``os.environ`` with ``dirs`` in front of PYTHONPATH, which is kept: it may be what points at this checkout."""
    path = os.pathsep.join([*map(str, dirs), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**os.environ, "PYTHONPATH": path, **extra}


def compose_config(*overrides: str):
    """The config scripts/train.py would see for these command-line overrides."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def payload_of(trainer) -> dict:
    """The checkpoint payload of ``trainer`` as the checkpoint callback builds it."""
    from alttrain.persist.schema import build_payload
    from alttrain.scale.rng import capture_rng_state

    return build_payload(trainer, rng=capture_rng_state(), config="", meta={})


@pytest.fixture
def compose_cfg():
    return compose_config


def assert_identical(a, b, path=""):
    """Every tensor ``torch.equal``, every other value ``==``, the same keys everywhere; returns tensors compared."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: keys {list(a)} != {list(b)}"
        return sum(assert_identical(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        return sum(assert_identical(x, y, f"{path}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{path} differs"
        return 1
    assert a == b, f"{path}: {a!r} != {b!r}"
    return 0


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: bit-identical training needs a fixed thread count, and on a busy
    2-core machine tiny tensors run several times faster on one thread than on two competing ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def after_the_event_files_second(run_dir):
    """Wait for the wall-clock second after the newest event file was opened.

    TensorBoard reads a directory's event files in name order, and a name's first varying field is
    the second its writer opened. Two writers opened in the same second sort by pid and counter
    instead, and ``.10`` sorts before ``.9``: a resumed run would be read first. A real resume
    starts at least one run's length after the run it continues; these test runs take under a second.
    """
    opened = max(int(f.name.split(".")[3]) for f in run_dir.glob("events.out.tfevents.*"))
    while time.time() < opened + 1:
        time.sleep(0.05)
