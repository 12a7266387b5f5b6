"""Training shipped experiments through the real entry point, several seeds, for the quality benchmarks.

``scripts/bench_modes.py`` (the 2-D mixtures) and ``scripts/bench_digits.py`` (the digits runs) both
train with :func:`run_one`: the config ``scripts/train.py experiment=<name> seed=<s> <overrides>``
would compose, trained by :func:`alttrain.run.app.train` with its callbacks, TensorBoard,
checkpoints and final evaluation, so the wall time is the product's.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_run(experiment: str, seed: int, overrides: list[str]):
    """The config ``scripts/train.py experiment=<experiment> seed=<seed> <overrides>`` would train."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", f"seed={seed}",
                                                       "trainer.progress=never", *overrides])


def run_one(experiment: str, seed: int, overrides: list[str], run_dir: Path) -> dict:
    """Train one run; returns its final metrics with ``wall_s`` and ``cpu_s`` added."""
    from alttrain.run.app import train

    all_overrides = [f"experiment={experiment}", f"seed={seed}", *overrides]
    cfg = compose_run(experiment, seed, overrides)
    console = io.StringIO()  # the progress lines of ten runs would bury the table; shown on failure
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        with contextlib.redirect_stderr(console):
            metrics = train(cfg, run_dir, all_overrides)
    except BaseException:
        sys.stderr.write(console.getvalue())
        raise
    return {**metrics, "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def mean_se(values: list[float], digits: int = 2) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)
