"""Mode coverage on the 2-D benchmarks over several seeds, trained by the real entry point.

    python scripts/bench_modes.py                                    # ring8 and grid25, seeds 0-4
    python scripts/bench_modes.py --experiments ring8 --seeds 3      # one experiment, seeds 0-2
    python scripts/bench_modes.py --out outputs/bench_modes trainer.max_steps=4000   # keep runs; any override

Every run composes the Hydra config exactly as ``scripts/train.py experiment=<name> seed=<s>``
would (plus the overrides given here) and trains it with :func:`alttrain.app.train`, callbacks,
TensorBoard, checkpoints and final evaluation included, so the wall time is the product's. Run
dirs go to a temporary folder that is deleted at the end, or under ``--out`` when given.

Reported per experiment, as in the VEEGAN and PacGAN papers (2,500 samples): modes captured and
the percentage of high-quality samples (within 3 sd of a mode), mean ± standard error over seeds,
and wall and CPU seconds per run. Target: every mode in every seed, >= 95% high quality in every
seed, every run under 60 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
MODES = {"ring8": 8, "grid25": 25}
TARGET_HQ, TARGET_SECONDS = 95.0, 60.0


def compose_run(experiment: str, seed: int, overrides: list[str]):
    """The config ``scripts/train.py experiment=<experiment> seed=<seed> <overrides>`` would train."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"experiment={experiment}", f"seed={seed}",
                                                       "trainer.progress=never", *overrides])


def run_one(experiment: str, seed: int, overrides: list[str], run_dir: Path) -> dict:
    """Train one run; returns its final metrics with ``wall_s`` and ``cpu_s`` added."""
    from alttrain.app import train

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


def mean_se(values: list[float]) -> str:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {se:.2f}"


def summary(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| experiment | seeds | modes (mean ± SE) | seeds with every mode | % high quality (mean ± SE) | "
             "min % HQ | wall s per run (mean / max) | CPU s per run (mean) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in results.items():
        modes, hq = [r["modes"] for r in runs], [r["high_quality"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        complete = sum(m == MODES[name] for m in modes)
        lines.append(f"| {name} | {len(runs)} | {mean_se(modes)} / {MODES[name]} | {complete}/{len(runs)} | "
                     f"{mean_se(hq)} | {min(hq):.1f} | {statistics.fmean(walls):.1f} / {max(walls):.1f} | "
                     f"{statistics.fmean(r['cpu_s'] for r in runs):.1f} |")
    return lines


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    for name, runs in results.items():
        ok_modes = all(r["modes"] == MODES[name] for r in runs)
        ok_hq = all(r["high_quality"] >= TARGET_HQ for r in runs)
        ok_time = all(r["wall_s"] < TARGET_SECONDS for r in runs)
        lines.append(f"- {name}: every mode in every seed: {_yes(ok_modes)}; >= {TARGET_HQ:g}% HQ in every seed: "
                     f"{_yes(ok_hq)}; every run < {TARGET_SECONDS:g} s wall: {_yes(ok_time)}")
    return lines


def _yes(ok: bool) -> str:
    return "met" if ok else "MISSED"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="ring8,grid25", type=lambda s: s.split(","), help="ring8,grid25")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    p.add_argument("--steps", type=int, default=None,
                   help="trainer.max_steps for every run (default: the experiment's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="keep run dirs under OUT/<experiment>/seed<s>")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run, e.g. trainer.max_steps=4000")
    args = p.parse_args(argv)
    unknown = set(args.experiments) - set(MODES)
    if unknown:
        p.error(f"unknown experiment {sorted(unknown)[0]!r}; choose from {', '.join(MODES)}")
    if args.seeds < 1:
        p.error("--seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = list(args.overrides) + ([f"trainer.max_steps={args.steps}"] if args.steps else [])
    results: dict[str, list[dict]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_modes_") as tmp:
        base = args.out or Path(tmp)
        for name in args.experiments:
            for seed in range(args.seeds):
                r = run_one(name, seed, overrides, base / name / f"seed{seed}")
                results.setdefault(name, []).append(r)
                print(f"  {name} seed {seed}: {r['modes']:.0f}/{MODES[name]} modes, {r['high_quality']:.1f}% HQ, "
                      f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)
    lines = summary(results) + ["", *verdicts(results), "",
                                f"overrides: {' '.join(overrides) or '(none)'}; load average (1/5/15 min) "
                                f"before {_load(load_before)}, after {_load(os.getloadavg())}"]
    print("\n".join(lines))
    return results


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    main()
