"""Image quality of the digits experiments over several seeds, trained by the real entry point.

    python scripts/bench_digits.py                                    # digits and digits_cond, seeds 0-2
    python scripts/bench_digits.py --experiments digits_cond --seeds 1
    python scripts/bench_digits.py --out outputs/bench_digits trainer.max_steps=2000   # keep runs; any override

Every run trains ``scripts/train.py experiment=<name> seed=<s>`` as the command line would
(:mod:`alttrain.benchmarks.quality`). Reported per run, in the feature space of the shipped digits
classifier: FID, KID, classes covered; for a conditional experiment also ``class_accuracy``, the
share of samples asked for class k that the classifier recognises as k (mean over classes, and the
worst class); and wall seconds. The conditional target (``experiment=digits_cond``): class accuracy
>= 95% on average and >= 90% for every class, FID no worse than the unconditional main job's, in
under 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from alttrain.benchmarks.quality import load, mean_se, met, run_one

EXPERIMENTS = ("digits", "digits_cond")
TARGET_MEAN_ACC, TARGET_MIN_ACC, TARGET_SECONDS = 0.95, 0.90, 180.0


def table(results: dict[str, list[dict]]) -> list[str]:
    lines = ["| experiment | seed | FID | KID | classes covered | class accuracy (mean / worst class) | wall s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, runs in results.items():
        for seed, r in enumerate(runs):
            acc = (f"{100 * r['class_accuracy']:.1f}% / {100 * r['class_accuracy_min']:.1f}%"
                   if "class_accuracy" in r else "-")
            lines.append(f"| {name} | {seed} | {r['fid']:.2f} | {r['kid']:.3f} | {r['classes_covered']:.0f} | {acc} | "
                         f"{r['wall_s']:.0f} |")
        fids = [r["fid"] for r in runs]
        lines.append(f"| {name} | mean ± SE | {mean_se(fids)} | | | | {statistics.fmean(r['wall_s'] for r in runs):.0f} |")
    return lines


def verdicts(results: dict[str, list[dict]]) -> list[str]:
    lines = []
    reference = statistics.fmean(r["fid"] for r in results["digits"]) if "digits" in results else None
    for name, runs in results.items():
        if "class_accuracy" not in runs[0]:
            continue
        ok_mean = all(r["class_accuracy"] >= TARGET_MEAN_ACC for r in runs)
        ok_min = all(r["class_accuracy_min"] >= TARGET_MIN_ACC for r in runs)
        ok_time = all(r["wall_s"] < TARGET_SECONDS for r in runs)
        fid = statistics.fmean(r["fid"] for r in runs)
        fid_verdict = (f"{met(fid <= reference)} ({fid:.2f} vs {reference:.2f})" if reference is not None
                       else f"{fid:.2f} (run digits too to compare)")
        lines.append(f"- {name}: class accuracy >= {TARGET_MEAN_ACC:.0%} on average in every seed: {met(ok_mean)}; "
                     f">= {TARGET_MIN_ACC:.0%} for every class in every seed: {met(ok_min)}; FID no worse than "
                     f"digits: {fid_verdict}; every run < {TARGET_SECONDS:g} s: {met(ok_time)}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=",".join(EXPERIMENTS), type=lambda s: s.split(","))
    p.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    p.add_argument("--out", type=Path, default=None, help="keep run dirs under OUT/<experiment>/seed<s>")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_digits_") as tmp:
        base = args.out or Path(tmp)
        for name in args.experiments:
            for seed in range(args.seeds):
                r = run_one(name, seed, list(args.overrides), base / name / f"seed{seed}")
                results.setdefault(name, []).append(r)
                print(f"  {name} seed {seed}: FID {r['fid']:.2f}, {r['wall_s']:.0f} s, load {os.getloadavg()[0]:.2f}",
                      file=sys.stderr, flush=True)
    print("\n".join(table(results) + ["", *verdicts(results), "",
                                      f"overrides: {' '.join(args.overrides) or '(none)'}; load average before "
                                      f"{load(load_before)}, after {load(os.getloadavg())}"]))
    return results


if __name__ == "__main__":
    main()
