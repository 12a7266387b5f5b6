"""Throughput of one GAN written three ways: alttrain's Trainer, a hand-written loop, Lightning.

    python scripts/bench.py                                  # MLP and DCGAN, 5 interleaved rounds
    python scripts/bench.py --workloads mlp --rounds 9       # the overhead case only, more rounds
    python scripts/bench.py --device cuda --threads 1        # on a GPU (auto picks it when present)

Workloads (alttrain.benchmarks.WORKLOADS): ``mlp`` is the 2-D ring8 GAN (hidden 128, depth 2,
batch 256), where a framework's per-step overhead shows most; ``dcgan`` is DCGAN at 32x32 on the
digits (batch 64). Implementations: ``alttrain`` (the Trainer, no callbacks), ``plain`` (the
hand-written loop in alttrain/benchmarks/plain_loop.py: the floor) and ``lightning`` (manual
optimization with toggle_optimizer; needs ``pip install -e ".[bench]"``, skipped without it).
``alttrain-logged`` and ``lightning-logged`` are the two frameworks as a user runs them by default:
losses to TensorBoard every 50 steps and a progress bar (alttrain.benchmarks explains the set-up).

Method: first one process per workload checks that every implementation, from the same seed,
ends 2 steps with the same weights and buffers as the plain loop. Then every measurement runs
in a fresh process; each round runs every measurement once per workload, in an order rotated
from round to round, so slow drift of the machine's load hits all of them alike.

* Rates: one implementation per process; warm-up steps excluded, the rest timed in 10 blocks, the
  median block's rate kept (a burst of work from another process slows one block, not the result).
  The table gives the median over rounds and the median per-round ratio to the plain loop.
* Pairs (PAIRS): two implementations in one process, alternating blocks of steps, which share the
  process's luck; fresh processes of identical code differ by more than the overheads measured.
  The ratio is the median over block pairs, then over rounds. Targets are judged on these.
* ``G phase``: the plain loop's G update alone with D frozen and with D left trainable
  (alternating in one process): what freezing saves, D's weight-gradient GEMMs.

The Lightning target compares the two frameworks as they are run for training (the ``-logged``
pair). ``lightning`` alone is Lightning's ``barebones=True``, which its docs reserve for measuring
the Trainer's overhead; the bare pair is printed for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("plain", "alttrain", "lightning", "alttrain-logged", "lightning-logged")
DEFAULT_STEPS = {"mlp": (1000, 100), "dcgan": (30, 5)}  # (timed steps, warm-up steps) per process
CHECK_STEPS = 2
# Targets: alttrain's steps/s as a fraction of the plain loop's, and as a multiple of Lightning's.
# wall: elapsed time (what a user waits for). cpu: CPU time of this process, which other processes
# on a shared machine barely disturb; meaningful with --threads 1 (idle OpenMP threads spin).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# Ratios measured in one process (time_paired), as (workload, numerator, denominator).
PAIRS = (("mlp", "alttrain", "plain"), ("dcgan", "alttrain", "plain"),
         ("mlp", "alttrain-logged", "lightning-logged"), ("mlp", "alttrain", "lightning"))
# The Lightning target is against Lightning as it is run for training: its default Trainer, the
# module logging its losses. Lightning's docs reserve barebones=True for measuring the Trainer's own
# overhead and discourage it for training; that pairing is printed for reference, with no target.
TARGETS = {("mlp", "alttrain", "plain"): 0.97, ("dcgan", "alttrain", "plain"): 0.99,
           ("mlp", "alttrain-logged", "lightning-logged"): 1.5}


# -- worker side: one measurement in this (fresh) process ------------------------------------------


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run, device, now) -> float:
    """Seconds (of the clock ``now``) that ``run()`` takes, device work included."""
    _sync(device)
    t0 = now()
    run()
    _sync(device)
    return now() - t0


def time_impl(impl: str, workload: str, steps: int, warmup: int, device: str, seed: int, clock: str,
              blocks: int = 10) -> dict:
    """Steps/s of ``impl`` on ``workload``: ``steps`` steps after ``warmup`` untimed ones, in ``blocks``.

    ``steps_per_s`` is the median block's rate: a burst of work from another process slows one
    block, not the result. ``mean_steps_per_s`` is over all timed steps.
    """
    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    setup = make_setup(workload, seed, device)
    now = CLOCKS[clock]
    block = max(1, steps // blocks)
    marks = [warmup + i * block for i in range(steps // block + 1)]  # completed steps at each clock read
    with tempfile.TemporaryDirectory(prefix="bench_logs_") as tmp:
        log_dir = tmp if impl.endswith("-logged") else None
        if impl.startswith("lightning"):
            from alttrain.benchmarks.lightning_gan import run_lightning

            times = run_lightning(setup, marks, clock=now, log_dir=log_dir)
        elif impl.startswith("alttrain"):
            clock_marks = _clock_marks(marks, now, setup.device)
            alttrain_trainer(setup, max_steps=marks[-1], log_dir=log_dir, callbacks=[clock_marks]).fit()
            times = clock_marks.times
        else:
            loop, times = PlainLoop(setup), []
            loop.run(warmup)
            for i in range(len(marks)):
                if i:
                    loop.run(block)
                _sync(setup.device)
                times.append(now())
    spans = [b - a for a, b in zip(times, times[1:])]
    return {"steps_per_s": block / statistics.median(spans), "mean_steps_per_s": block * len(spans) / sum(spans)}


def _clock_marks(marks: list[int], clock, device):
    """A Trainer callback whose ``times`` gets the clock read when ``trainer.state.step`` reaches each mark
    (a mark at the step a ``fit`` starts from: at its start, after the callbacks before this one)."""
    from alttrain.callbacks.base import Callback

    class ClockMarks(Callback):
        def __init__(self):
            self.marks, self.times = set(marks), []

        def on_train_start(self, trainer) -> None:  # a mark at the step fit starts from
            self.on_step_end(trainer)

        def on_step_end(self, trainer) -> None:
            if trainer.state.step in self.marks:
                _sync(device)
                self.times.append(clock())

    return ClockMarks()


# Steps each framework block runs before its timed span: the start of a ``fit`` (opening a
# TensorBoard file and a progress bar; Lightning builds its whole Trainer) is paid once per run, not
# per step, so each block's fit is timed from the clock read after its first LEAD steps. A DCGAN
# step dwarfs any of that.
LEAD = {"mlp": 5, "dcgan": 0}


def _block_timer(impl: str, workload: str, warmup: int, device: str, seed: int, clock: str,
                 log_dir: str) -> Callable[[int], float]:
    """Builds ``impl``, runs its ``warmup`` steps, and returns ``run(n)``: seconds of the next ``n`` steps.

    The plain loop is timed around ``n`` steps. A framework runs each block as one ``fit`` of
    ``LEAD + n`` steps, timed between the clock reads after its step ``LEAD`` and ``LEAD + n``:
    alttrain's Trainer continues from where its last fit stopped; Lightning fits a fresh Trainer
    (the module's weights carry over, its optimizers start afresh: the same work per step).
    """
    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    setup, now, lead = make_setup(workload, seed, device), CLOCKS[clock], LEAD[workload]
    logs = log_dir if impl.endswith("-logged") else None
    if impl == "plain":
        loop = PlainLoop(setup)
        loop.run(warmup)
        return lambda n: _timed(lambda: loop.run(n), setup.device, now)
    if impl.startswith("lightning"):
        from alttrain.benchmarks.lightning_gan import run_lightning

        run_lightning(setup, [warmup], clock=now, log_dir=logs)

        def lightning_block(n: int) -> float:
            first, last = run_lightning(setup, [lead, lead + n], clock=now, log_dir=logs)
            return last - first

        return lightning_block
    marks = _clock_marks([], now, setup.device)
    trainer = alttrain_trainer(setup, max_steps=warmup, log_dir=logs, callbacks=[marks])
    trainer.fit()

    def alttrain_block(n: int) -> float:
        start = trainer.state.step
        marks.marks, marks.times = {start + lead, start + lead + n}, []
        trainer.max_steps = start + lead + n
        trainer.fit()
        return marks.times[1] - marks.times[0]

    return alttrain_block


def time_paired(workload: str, num: str, den: str, steps: int, warmup: int, device: str, seed: int,
                clock: str, blocks: int = 100) -> dict:
    """Implementations ``num`` and ``den`` in one process, alternating blocks of steps.

    Fresh processes differ from each other by several percent (where the OS puts them, how their
    memory lands), more than the overhead being measured; two loops sharing one process share that
    luck. Many short blocks pair best: the machine's slow spells then fall on both sides of a pair.
    Returns the median over block pairs of ``den``-time / ``num``-time, i.e. ``num``'s speed as a
    multiple of ``den``'s (the order within a pair alternates), and each side's median rate.
    """
    block = max(1, steps // blocks)
    with tempfile.TemporaryDirectory(prefix="bench_logs_") as tmp:
        run = {impl: _block_timer(impl, workload, warmup, device, seed, clock, f"{tmp}/{impl}")
               for impl in (num, den)}
        times: dict[str, list[float]] = {num: [], den: []}
        for i in range(blocks):
            for impl in ((num, den) if i % 2 else (den, num)):
                times[impl].append(run[impl](block))
    return {"ratio": statistics.median(d / n for n, d in zip(times[num], times[den])),
            "num_steps_per_s": block / statistics.median(times[num]),
            "den_steps_per_s": block / statistics.median(times[den])}


def time_g_phase(workload: str, steps: int, warmup: int, device: str, seed: int, clock: str,
                 blocks: int = 10) -> dict:
    """Median seconds of the plain loop's G update with D frozen and with D trainable."""
    from alttrain.benchmarks import make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    setup = make_setup(workload, seed, device)
    now = CLOCKS[clock]
    loop = PlainLoop(setup)
    loop.run(warmup)
    times = {True: [], False: []}
    per_block = max(1, steps // blocks)
    for block in range(2 * blocks):
        loop.freeze_d = block % 2 == 0  # the math is the same either way: only the cost differs
        for _ in range(per_block):
            loop.d_step()
            times[loop.freeze_d].append(_timed(loop.g_step, setup.device, now))
    return {"g_frozen_s": statistics.median(times[True]), "g_trainable_s": statistics.median(times[False])}


def check_weights(workload: str, impls: list[str], steps: int, device: str, seed: int) -> dict:
    """Largest |difference| of every parameter and buffer from the plain loop's after ``steps`` steps."""
    import torch

    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    def final_state(impl: str) -> dict:
        setup = make_setup(workload, seed, device)
        if impl == "plain":
            PlainLoop(setup).run(steps)
        elif impl == "alttrain":
            alttrain_trainer(setup, max_steps=steps).fit()
        else:
            from alttrain.benchmarks.lightning_gan import fit_lightning

            fit_lightning(setup, steps)
        return {**{f"G.{k}": v for k, v in setup.generator.state_dict().items()},
                **{f"D.{k}": v for k, v in setup.discriminator.state_dict().items()}}

    reference = final_state("plain")
    out = {}
    for impl in impls:
        if impl in ("alttrain", "lightning"):  # logging changes no number: the logged runs are the same math
            state = final_state(impl)
            out[impl] = max((state[k].double() - v.double()).abs().max().item() for k, v in reference.items())
    return {"max_abs_diff": out}


def worker(spec: dict) -> None:
    """Run one measurement described by ``spec`` and print its result as the last line (JSON)."""
    import torch

    from alttrain.benchmarks.lightning_gan import quiet_lightning

    quiet_lightning()
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    kind, args = spec["kind"], spec["args"]
    result = {"check": check_weights, "gphase": time_g_phase, "impl": time_impl, "paired": time_paired}[kind](**args)
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
                      f"{_short(result)}  load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    return rates, paired, gphase


def _short(result: dict) -> str:
    if "steps_per_s" in result:
        return f"{result['steps_per_s']:.1f} steps/s"
    if "ratio" in result:
        return (f"in one process: {result['num_steps_per_s']:.1f} vs {result['den_steps_per_s']:.1f} steps/s, "
                f"ratio {result['ratio']:.3f}")
    return f"G frozen {1e3 * result['g_frozen_s']:.2f} ms, trainable {1e3 * result['g_trainable_s']:.2f} ms"


def paired_ratio(rates: dict, workload: str, num: str, den: str) -> float | None:
    if (workload, num) not in rates or (workload, den) not in rates:
        return None
    return statistics.median(a / b for a, b in zip(rates[(workload, num)], rates[(workload, den)]))


def rate_table(rates: dict, workloads: list[str], impls: list[str]) -> list[str]:
    lines = ["| workload | implementation | steps/s (median) | min - max | vs plain (median per round) |",
             "| --- | --- | ---: | ---: | ---: |"]
    for workload in workloads:
        for impl in impls:
            values = rates[(workload, impl)]
            ratio = paired_ratio(rates, workload, impl, "plain")
            lines.append(f"| {workload} | {impl} | {statistics.median(values):.1f} | "
                         f"{min(values):.1f} - {max(values):.1f} | {ratio:.3f}x |")
    return lines


def target_lines(rates: dict, paired: dict) -> list[str]:
    """Verdicts, from the in-process pairing where it was measured, else from separate processes."""
    lines = []
    for key, target in TARGETS.items():
        workload, num, den = key
        if key in paired:
            ratio, how = statistics.median(r["ratio"] for r in paired[key]), "interleaved in one process"
        else:
            ratio, how = paired_ratio(rates, workload, num, den), "separate processes"
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


def check_lines(args, device: str) -> list[str]:
    lines = []
    for workload in args.workloads:
        spec = {"threads": args.threads, "kind": "check",
                "args": {"workload": workload, "impls": list(args.impls), "steps": CHECK_STEPS,
                         "device": device, "seed": args.seed}}
        for impl, diff in run_worker(spec)["max_abs_diff"].items():
            verdict = "bit-identical" if diff == 0 else f"max |diff| {diff:.3g}"
            lines.append(f"- {workload}: {impl} vs plain after {CHECK_STEPS} steps: {verdict}")
            if diff > 1e-4:
                raise SystemExit(f"error: {impl} does not compute what the plain loop computes on {workload} "
                                 f"(max |diff| {diff:.3g}); timings would compare different work")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="mlp,dcgan", type=lambda s: s.split(","), help="mlp,dcgan")
    p.add_argument("--impls", default=",".join(IMPLS), type=lambda s: s.split(","),
                   help=f"{','.join(IMPLS)} (plain is always included: it is the reference)")
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
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.impls) - set(IMPLS)
    if unknown or args.rounds < 1:
        p.error(f"unknown implementation {sorted(unknown)[0]!r}" if unknown else "--rounds must be >= 1")
    args.impls = ["plain"] + [i for i in IMPLS[1:] if i in args.impls]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if any(i.startswith("lightning") for i in args.impls) and not lightning_installed():
        print("note: lightning is not installed (pip install -e \".[bench]\"); leaving it out", file=sys.stderr)
        args.impls = [i for i in args.impls if not i.startswith("lightning")]
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.startswith("cuda"):
        raise SystemExit("error: --clock cpu measures CPU time, not GPU work; use --clock wall (or --device cpu)")
    load_before = os.getloadavg()
    lines = [f"machine: {machine_line(device, args.threads)}; clock {args.clock}", "",
             "correctness (same seed, same batches):"]
    lines += check_lines(args, device)
    rates, paired, gphase = measure(args, device)
    load_after = os.getloadavg()
    lines += ["", *rate_table(rates, args.workloads, args.impls), ""]
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
