"""Mode coverage on the 2-D benchmarks over several seeds, trained by the real entry point.

    python scripts/bench_modes.py                                    # ring8 and grid25, seeds 0-4
    python scripts/bench_modes.py --experiments ring8 --seeds 3      # one experiment, seeds 0-2
    python scripts/bench_modes.py --out outputs/bench_modes trainer.max_steps=4000   # keep runs; any override

Every run composes the Hydra config exactly as ``scripts/train.py experiment=<name> seed=<s>``
would (plus the overrides given here) and trains it with :func:`alttrain.run.app.train`, callbacks,
TensorBoard, checkpoints and final evaluation included, so the wall time is the product's. Run
dirs go to a temporary folder that is deleted at the end, or under ``--out`` when given.

Reported per experiment, as in the VEEGAN and PacGAN papers (2,500 samples): modes captured and
the percentage of high-quality samples (within 3 sd of a mode), mean ± standard error over seeds,
and wall and CPU seconds per run. Target: every mode in every seed, >= 95% high quality in every
seed, every run under 60 s on 2 CPU cores. ``bigan_ring8`` (three networks) is judged on every mode
and on ``G(E(x))`` landing on the mode of ``x`` for >= 90% of real points, in every seed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from alttrain.benchmarks.quality import load, mean_se, met, run_one

MODES = {"ring8": 8, "grid25": 25, "bigan_ring8": 8}
TARGET_HQ, TARGET_SECONDS = 95.0, 60.0
# bigan_ring8 (three networks) is judged on coverage and on G(E(x)) returning to x's mode, not on sharpness.
TARGET_RECON = 75.0  # % of real x whose G(E(x)) lands on x's mode, in every seed (BiGAN)


def summary(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| experiment | seeds | modes (mean ± SE) | seeds with every mode | % high quality (mean ± SE) | "
             "min % HQ | G(E(x)) on x's mode, % (mean, min) | wall s per run (mean / max) | CPU s per run (mean) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in results.items():
        modes, hq = [r["modes"] for r in runs], [r["high_quality"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        complete = sum(m == MODES[name] for m in modes)
        recon = [r["recon_same_mode"] for r in runs if "recon_same_mode" in r]
        shown = f"{statistics.fmean(recon):.1f}, {min(recon):.1f}" if recon else "-"
        lines.append(f"| {name} | {len(runs)} | {mean_se(modes)} / {MODES[name]} | {complete}/{len(runs)} | "
                     f"{mean_se(hq)} | {min(hq):.1f} | {shown} | {statistics.fmean(walls):.1f} / {max(walls):.1f} | "
                     f"{statistics.fmean(r['cpu_s'] for r in runs):.1f} |")
    return lines


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    for name, runs in results.items():
        ok_modes = all(r["modes"] == MODES[name] for r in runs)
        ok_time = all(r["wall_s"] < TARGET_SECONDS for r in runs)
        if "recon_same_mode" in runs[0]:
            ok_recon = all(r["recon_same_mode"] >= TARGET_RECON for r in runs)
            lines.append(f"- {name}: every mode in every seed: {met(ok_modes)}; G(E(x)) on x's mode for >= "
                         f"{TARGET_RECON:g}% in every seed: {met(ok_recon)}; every run < {TARGET_SECONDS:g} s wall: "
                         f"{met(ok_time)}")
            continue
        ok_hq = all(r["high_quality"] >= TARGET_HQ for r in runs)
        lines.append(f"- {name}: every mode in every seed: {met(ok_modes)}; >= {TARGET_HQ:g}% HQ in every seed: "
                     f"{met(ok_hq)}; every run < {TARGET_SECONDS:g} s wall: {met(ok_time)}")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default="ring8,grid25", type=lambda s: s.split(","),
                   help="ring8,grid25 (default), bigan_ring8")
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
                recon = f", G(E(x)) on x's mode {r['recon_same_mode']:.1f}%" if "recon_same_mode" in r else ""
                print(f"  {name} seed {seed}: {r['modes']:.0f}/{MODES[name]} modes, {r['high_quality']:.1f}% HQ{recon}, "
                      f"{r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)
    lines = summary(results) + ["", *verdicts(results), "",
                                f"overrides: {' '.join(overrides) or '(none)'}; load average (1/5/15 min) "
                                f"before {load(load_before)}, after {load(os.getloadavg())}"]
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
