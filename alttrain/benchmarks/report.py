"""The tables and verdicts ``scripts/bench.py`` prints, and the pairs and targets they judge."""

from __future__ import annotations

import statistics

# Ratios measured in one process (time_paired), as (workload, numerator, denominator).
PAIRS = (
    ("mlp", "alttrain-logged", "plain"), ("dcgan", "alttrain-logged", "plain"),
    ("mlp", "alttrain", "plain"), ("dcgan", "alttrain", "plain"),
    ("mlp", "plain", "plain-separate"), ("dcgan", "plain", "plain-separate"),
    ("mlp", "plain-twin", "plain"), ("dcgan", "plain-twin", "plain"),
    ("mlp", "alttrain-compile", "alttrain"), ("dcgan", "alttrain-compile", "alttrain"),
    ("mlp", "alttrain-separate-logged", "lightning-logged"), ("mlp", "alttrain-separate", "lightning"),
)
# alttrain as users run it (its default callbacks) against the loop they write (one G forward per
# step); the bare Trainer against it; compile against eager; alttrain against Lightning as Lightning is
# run for training (its default Trainer, logging its losses), on the same math (a G forward per update,
# which Lightning's module does). Lightning's docs reserve barebones=True for measuring its own
# overhead: that pair, and what one forward per step saves (plain / plain-separate), have no target.
# Nor has plain-twin / plain, two identical loops: how far from 1.0 it lands is the resolution of the
# other pairs on this machine that day (memory placement and the machine's load fall unevenly on the
# two sides of any pair).
TARGETS = {
    ("mlp", "alttrain-logged", "plain"): 0.97, ("dcgan", "alttrain-logged", "plain"): 1.0,
    ("mlp", "alttrain", "plain"): 0.97, ("dcgan", "alttrain", "plain"): 0.99,
    ("mlp", "alttrain-compile", "alttrain"): 1.0, ("dcgan", "alttrain-compile", "alttrain"): 1.0,
    ("mlp", "alttrain-separate-logged", "lightning-logged"): 1.5,
}


def median_ratio(rates: dict, workload: str, num: str, den: str) -> float | None:
    if (workload, num) not in rates or (workload, den) not in rates:
        return None
    return statistics.median(a / b for a, b in zip(rates[(workload, num)], rates[(workload, den)]))


def rate_table(rates: dict, workloads: list[str], impls: list[str], reference_of) -> list[str]:
    lines = ["| workload | implementation | steps/s (median) | min - max | vs its plain loop (median per round) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for workload in workloads:
        for impl in impls:
            if (workload, impl) not in rates:
                continue
            values, reference = rates[(workload, impl)], reference_of(impl)
            ratio = median_ratio(rates, workload, impl, reference)
            shown = f"{ratio:.3f}x ({reference})" if ratio is not None and impl != reference else "-"
            lines.append(f"| {workload} | {impl} | {statistics.median(values):.1f} | "
                         f"{min(values):.1f} - {max(values):.1f} | {shown} |")
    return lines


def target_lines(rates: dict, paired: dict) -> list[str]:
    """Verdicts, from the in-process pairing where it was measured, else from separate processes."""
    lines = []
    for key, target in TARGETS.items():
        workload, num, den = key
        if key in paired:
            ratio, how = statistics.median(r["ratio"] for r in paired[key]), "interleaved in one process"
        else:
            ratio, how = median_ratio(rates, workload, num, den), "separate processes"
        if ratio is not None:
            verdict = "met" if ratio >= target else "MISSED"
            lines.append(f"- {workload}: {num} / {den} = {ratio:.3f}x ({how}; target >= {target}x): {verdict}")
    return lines


def paired_table(paired: dict) -> list[str]:
    lines = ["| workload | A / B | A steps/s | B steps/s | A / B (median) | min - max | target |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for key in (k for k in PAIRS if k in paired):
        workload, num, den, results = *key, paired[key]
        ratios = [r["ratio"] for r in results]
        target = f">= {TARGETS[key]}x" if key in TARGETS else "none (reference)"
        lines.append(f"| {workload} | {num} / {den} | {statistics.median(r['num_steps_per_s'] for r in results):.1f} | "
                     f"{statistics.median(r['den_steps_per_s'] for r in results):.1f} | "
                     f"{statistics.median(ratios):.3f}x | {min(ratios):.3f} - {max(ratios):.3f} | {target} |")
    return lines


def gphase_table(gphase: dict) -> list[str]:
    lines = ["| workload | G update, D frozen (ms) | G update, D trainable (ms) | saved by freezing |",
             "| --- | ---: | ---: | ---: |"]
    for workload, results in gphase.items():
        frozen = statistics.median(r["g_frozen_s"] for r in results)
        trainable = statistics.median(r["g_trainable_s"] for r in results)
        saved = statistics.median(1 - r["g_frozen_s"] / r["g_trainable_s"] for r in results)
        lines.append(f"| {workload} | {1e3 * frozen:.2f} | {1e3 * trainable:.2f} | {100 * saved:.1f}% |")
    return lines


def short(result: dict) -> str:
    if "steps_per_s" in result:
        return f"{result['steps_per_s']:.1f} steps/s"
    if "ratio" in result:
        return (f"in one process: {result['num_steps_per_s']:.1f} vs {result['den_steps_per_s']:.1f} steps/s, "
                f"ratio {result['ratio']:.3f}")
    return f"G frozen {1e3 * result['g_frozen_s']:.2f} ms, trainable {1e3 * result['g_trainable_s']:.2f} ms"
