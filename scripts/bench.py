"""Throughput of one GAN written several ways: alttrain's Trainer, a hand-written loop, Lightning.

    python scripts/bench.py                                  # MLP and DCGAN, 5 interleaved rounds
    python scripts/bench.py --workloads mlp --rounds 9       # the overhead case only, more rounds
    python scripts/bench.py --device cuda --threads 1        # on a GPU (auto picks it when present)
    python scripts/bench.py --impls plain,alttrain,alttrain-compile   # compiled against eager only
    python scripts/bench.py --workloads data                 # the input pipeline (alttrain/benchmarks/pipeline.py)

Workloads (alttrain.benchmarks.WORKLOADS): ``mlp`` is the 2-D ring8 GAN (hidden 128, depth 2,
batch 256), where a framework's per-step overhead shows most; ``dcgan`` is DCGAN at 32x32 on the
digits (batch 64). Implementations (alttrain.benchmarks.timing.IMPLS): ``plain`` is the loop people
write (pytorch/examples: one G forward per step, its fakes scored detached by D and backpropagated by
G) and ``plain-separate`` the same with a G forward per update; ``plain-twin`` is a second ``plain``,
paired with it as a control (two identical loops: how far their ratio lands from 1.0 is how finely
the other pairs resolve on the machine that day); ``alttrain`` is the Trainer with its
defaults (``trainer.reuse_fakes`` on: plain's math), ``-separate`` without reuse (plain-separate's
math), ``-logged`` with TensorBoard every 50 steps and a progress bar (as a user runs it), and
``alttrain-compile`` with ``trainer.compile=true``; ``lightning`` is manual optimization with
toggle_optimizer (plain-separate's math; ``pip install -e ".[bench]"``, left out without it),
``lightning-logged`` Lightning's default Trainer with the module logging its losses.

Method: first one process per workload checks that every implementation, from the same seed, ends 2
steps with the same weights and buffers as the plain loop doing its math. Then every measurement runs
in a fresh process; each round runs every measurement once per workload, in an order rotated from
round to round, so slow drift of the machine's load hits all of them alike.

* Rates: one implementation per process; warm-up steps excluded, the rest timed in 10 blocks, the
  median block's rate kept (a burst of work from another process slows one block, not the result).
* Pairs (alttrain.benchmarks.report.PAIRS): two implementations in one process, alternating blocks of
  steps, which share the process's luck; fresh processes of identical code differ by more than the
  overheads measured. The ratio is the median over block pairs, then over rounds. Targets are judged
  on these.
* ``G phase``: the plain loop's G update alone with D frozen and with D left trainable
  (alternating in one process): what freezing saves, D's weight-gradient GEMMs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = {"mlp": (1000, 100), "dcgan": (30, 5)}  # (timed steps, warm-up steps) per process
CHECK_STEPS = 2
# wall: elapsed time (what a user waits for). cpu: CPU time of this process, which other processes
# on a shared machine barely disturb; meaningful with --threads 1 (idle OpenMP threads spin).
from alttrain.benchmarks.report import (
    PAIRS,
    gphase_table,
    paired_table,
    rate_table,
    short,
    target_lines,
)
from alttrain.benchmarks.timing import CLOCKS, IMPLS


def worker(spec: dict) -> None:
    """Run one measurement described by ``spec`` and print its result as the last line (JSON)."""
    import torch

    from alttrain.benchmarks.lightning_gan import quiet_lightning

    quiet_lightning()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    from alttrain.benchmarks import timing

    kind, args = spec["kind"], spec["args"]
    run = {"check": timing.check_weights, "gphase": timing.time_g_phase, "impl": timing.time_impl,
           "paired": timing.time_paired}[kind]
    result = run(**args)
    print(json.dumps(result), flush=True)


# -- driver side: fresh processes, interleaved, summarised -----------------------------------------


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: benchmark worker {spec['kind']} {spec['args']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def lightning_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightning") is not None


def resolve_device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def machine_line(device: str, threads: int | None) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else ""
    versions = f"torch {torch.__version__}"
    if lightning_installed():
        import lightning

        versions += f", lightning {lightning.__version__}"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}; {versions}; device {device}, "
            f"torch threads {threads or torch.get_num_threads()}")


def rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure(args, device: str) -> tuple[dict, dict, dict]:
    """Per round: ``rates[(workload, impl)]`` steps/s of fresh processes, ``paired[(workload, num, den)]``
    in-process ratios (see PAIRS), ``gphase[workload]`` G-phase times."""
    rates, paired, gphase = {}, {}, {}
    for r in range(args.rounds):
        for workload in args.workloads:
            steps, warmup = args.steps or DEFAULT_STEPS[workload][0], args.warmup
            warmup = DEFAULT_STEPS[workload][1] if warmup is None else warmup
            common = {"workload": workload, "steps": steps, "warmup": warmup, "device": device, "seed": args.seed,
                      "clock": args.clock}
            jobs = [(impl, {"kind": "impl", "args": {"impl": impl, **common}}) for impl in args.impls]
            jobs += [(f"{num}/{den}", {"kind": "paired", "args": {"num": num, "den": den, **common}})
                     for w, num, den in PAIRS if w == workload and {num, den} <= set(args.impls)]
            jobs += [("G phase", {"kind": "gphase", "args": common})] if args.gphase else []
            for label, spec in rotated(jobs, r):
                result = run_worker({"threads": args.threads, **spec})
                if spec["kind"] == "impl":
                    rates.setdefault((workload, label), []).append(result["steps_per_s"])
                elif spec["kind"] == "paired":
                    paired.setdefault((workload, *label.split("/")), []).append(result)
                else:
                    gphase.setdefault(workload, []).append(result)
                print(f"  round {r + 1}/{args.rounds} {workload:5s} {label:9s} "
                      f"{short(result)}  load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return rates, paired, gphase


def check_lines(args, device: str) -> list[str]:
    lines = []
    for workload in args.workloads:
        spec = {"threads": args.threads, "kind": "check",
                "args": {"workload": workload, "impls": list(args.impls), "steps": CHECK_STEPS,
                         "device": device, "seed": args.seed}}
        for impl, diff in run_worker(spec)["max_abs_diff"].items():
            verdict = "bit-identical" if diff == 0 else f"max |diff| {diff:.3g}"
            lines.append(f"- {workload}: {impl} vs {IMPLS[impl].reference} after {CHECK_STEPS} steps: {verdict}")
            # Inductor reorders float operations, and Adam turns a rounding-level difference in a near-zero
            # gradient into a step of up to lr (2e-4 here): a compiled run is held to a few such steps.
            if diff > (5e-3 if IMPLS[impl].compile else 1e-4):
                raise SystemExit(f"error: {impl} does not compute what the plain loop computes on {workload} "
                                 f"(max |diff| {diff:.3g}); timings would compare different work")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="mlp,dcgan", type=lambda s: s.split(","), help="mlp,dcgan,data")
    p.add_argument("--impls", default=",".join(IMPLS), type=lambda s: s.split(","),
                   help=f"{','.join(IMPLS)} (the plain loops they are compared with are always included)")
    p.add_argument("--rounds", type=int, default=5, help="fresh processes per implementation and workload")
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default: mlp 1000, dcgan 30)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: mlp 100, dcgan 5)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (default: torch's)")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="wall (default) | cpu: process CPU time, steadier on a shared machine (use --threads 1)")
    p.add_argument("--no-gphase", dest="gphase", action="store_false",
                   help="skip the G-phase measurement (D frozen vs trainable)")
    p.add_argument("--seed", type=int, default=0)
    # The data workload: images/s of the input pipeline, and time/data_wait (alttrain/benchmarks/pipeline.py).
    p.add_argument("--data-images", type=int, default=3000, help="data: JPEGs generated per image size")
    p.add_argument("--data-sizes", default="64,128", type=lambda s: [int(x) for x in s.split(",")],
                   help="data: image sizes in pixels")
    p.add_argument("--data-workers", type=int, default=2, help="data: DataLoader workers for both pipelines")
    p.add_argument("--data-batches", type=int, default=40, help="data: timed batches per measurement")
    p.add_argument("--data-warmup", type=int, default=5, help="data: untimed batches first (worker start-up)")
    p.add_argument("--data-steps", type=int, default=60, help="data: steps of each DCGAN run for time/data_wait")
    p.add_argument("--data-batch-size", type=int, default=64, help="data: batch size")
    p.add_argument("--data-dir", default=None, help="data: where the JPEG folders are generated and kept "
                   "(default: a temporary dir)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.impls) - set(IMPLS)
    if unknown or args.rounds < 1:
        p.error(f"unknown implementation {sorted(unknown)[0]!r}" if unknown else "--rounds must be >= 1")
    wanted = set(args.impls) | {IMPLS[i].reference for i in args.impls}
    args.impls = [i for i in IMPLS if i in wanted]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if any(i.startswith("lightning") for i in args.impls) and not lightning_installed():
        print("note: lightning is not installed (pip install -e \".[bench]\"); leaving it out", file=sys.stderr)
        args.impls = [i for i in args.impls if not i.startswith("lightning")]
    device = resolve_device(args.device)
    if "data" in args.workloads:
        from alttrain.benchmarks.pipeline import run_data_bench

        print("\n".join(run_data_bench(args.data_images, args.data_sizes, args.data_workers, args.rounds,
                                       args.data_batches, args.data_warmup, args.data_steps, args.data_batch_size,
                                       device, args.data_dir)), flush=True)
        args.workloads = [w for w in args.workloads if w != "data"]
        if not args.workloads:
            return None
    if args.clock == "cpu" and device.startswith("cuda"):
        raise SystemExit("error: --clock cpu measures CPU time, not GPU work; use --clock wall (or --device cpu)")
    load_before = os.getloadavg()
    lines = [f"machine: {machine_line(device, args.threads)}; clock {args.clock}", "",
             "correctness (same seed, same batches):"]
    lines += check_lines(args, device)
    rates, paired, gphase = measure(args, device)
    load_after = os.getloadavg()
    lines += ["", *rate_table(rates, args.workloads, args.impls, lambda i: IMPLS[i].reference), ""]
    if paired:
        lines += ["pairs interleaved in blocks within each process (A's speed as a multiple of B's):", "",
                  *paired_table(paired), ""]
    lines += ["targets:", *target_lines(rates, paired), "",
              *(gphase_table(gphase) + [""] if gphase else []),
              f"{args.rounds} rounds; load average (1/5/15 min) before {_load(load_before)}, after {_load(load_after)}"]
    print("\n".join(lines))


def _load(avg: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


if __name__ == "__main__":
    main()
