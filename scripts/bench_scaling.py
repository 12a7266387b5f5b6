"""How training scales: steps/s against batch size and width here, DDP traffic per update, 8 GPUs estimated.

    python scripts/bench_scaling.py --json outputs/scaling.json       # every part, default sweeps
    python scripts/bench_scaling.py --part compute --batches 32,64 --widths 16 --threads 2
    python scripts/bench_scaling.py --part estimate                   # the main job's step, ddp, the estimate

* ``compute``: steady-state Trainer steps/s and samples/s of the workloads of :mod:`alttrain.benchmarks`,
  timed in-process as :mod:`alttrain.benchmarks.timing` does (warm-up untimed; the median block's
  rate, so a burst of work from another process slows one block, not the result): DCGAN on digits
  across batch sizes at width 16 and widths at batch 64 (the main job, experiment=digits, is 64 and
  16), and the ring8 MLP across batch sizes.
* ``ddp``: two gloo processes on this CPU train experiment=digits through ``alttrain.run.app.train``;
  a comm hook on every DDP wrapper records each bucket's bytes and the time of its all-reduce.
* ``estimate``: experiment=digits on 8 GPUs from the measured bytes and all-reduce counts, for
  assumed interconnects (ring all-reduce), with no overlap of communication and compute.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = {"batch_size": 64, "base_width": 16}  # conf/experiment/digits.yaml with conf/model/dcgan.yaml
DEFAULT_STEPS = {"mlp": (1000, 100), "dcgan": (30, 5)}  # (timed steps, warm-up steps)
NAMES = {"dcgan": "DCGAN digits 32x32", "mlp": "MLP ring8"}
BLOCKS, WORLD, GPUS = 10, 2, 8
# Assumed interconnects: effective bus bandwidth (bytes/s), fixed cost per all-reduce (s).
LINKS = {"NVLink": (100e9, 20e-6), "PCIe": (10e9, 20e-6)}
TARGET = 0.9  # the scaling efficiency the estimate solves for
OVERRIDES = ("experiment=digits", "trainer.log_every=1000", "trainer.sample_every=0", "trainer.checkpoint_every=1000",
             "metrics.num_samples=64", "trainer.progress=never", "device=cpu", "logger=csv")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- compute: steps/s of the Trainer in this process ------------------------------------------------


def steps_per_s(workload: str, steps: int, warmup: int, **sizes: int) -> float:
    """Median block rate of ``steps`` Trainer steps after ``warmup`` untimed ones, all in one ``fit``."""
    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.timing import CLOCKS, clock_marks

    setup = make_setup(workload, 0, "cpu", **sizes)
    blocks = min(BLOCKS, steps)
    per_block = steps // blocks
    marks = clock_marks([warmup + i * per_block for i in range(blocks + 1)], CLOCKS["wall"], setup.device)
    alttrain_trainer(setup, max_steps=warmup + blocks * per_block, callbacks=[marks]).fit()
    return per_block / statistics.median(b - a for a, b in zip(marks.times, marks.times[1:]))


def measure_point(args, workload: str, sizes: dict) -> dict:
    from alttrain.benchmarks import WORKLOADS

    steps, warmup = DEFAULT_STEPS[workload]
    rate = steps_per_s(workload, args.steps or steps, warmup if args.warmup is None else args.warmup, **sizes)
    width = sizes.get("base_width", WORKLOADS[workload].get("hidden_dim"))
    log(f"  compute {workload} batch {sizes['batch_size']} width {width}: {rate:.2f} steps/s")
    return {"workload": workload, "batch": sizes["batch_size"], "width": width, "steps_per_s": rate,
            "samples_per_s": rate * sizes["batch_size"], "ms_per_step": 1e3 / rate}


def compute_grid(args) -> list[dict]:
    points = [("dcgan", {**MAIN_JOB, "batch_size": b}) for b in args.batches]
    points += [("dcgan", {**MAIN_JOB, "base_width": w}) for w in args.widths]
    points += [("mlp", {"batch_size": b}) for b in args.mlp_batches]
    unique = [p for i, p in enumerate(points) if p not in points[:i]]  # the main job is in both DCGAN sweeps
    return [measure_point(args, workload, sizes) for workload, sizes in unique]


def compute_table(rows: list[dict]) -> list[str]:
    return ["| workload | batch | width | steps/s | samples/s | ms/step |", "|---|---:|---:|---:|---:|---:|",
            *(f"| {NAMES[r['workload']]} | {r['batch']} | {r['width']} | {r['steps_per_s']:.2f} | "
              f"{r['samples_per_s']:.0f} | {r['ms_per_step']:.2f} |" for r in rows)]


def main_job_step_s(rows: list[dict]) -> float | None:
    return next((r["ms_per_step"] / 1e3 for r in rows
                 if r["workload"] == "dcgan" and (r["batch"], r["width"]) == tuple(MAIN_JOB.values())), None)


# -- ddp: what each update all-reduces, recorded by a comm hook on both gloo ranks ----------------


def _rank_main(rank: int, port: int, out: str, threads: int, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    from hydra import compose, initialize_config_dir

    from alttrain.engine.trainer import Trainer
    from alttrain.run.app import train
    from alttrain.scale import processes

    processes.setup()  # as scripts/train.py does, before Hydra composes the config
    records, fit = {}, Trainer.fit

    def recording_fit(self):
        hook_wrappers(self, records)
        state = fit(self)
        for rec in records.values():
            rec["updates"] = state.phase_updates[rec["phase"]]
        return state

    Trainer.fit = recording_fit
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=[*OVERRIDES, f"trainer.max_steps={steps}"])
        train(cfg, Path(out) / "run")
        Path(out, f"rank{rank}.json").write_text(json.dumps(records))
    finally:
        processes.teardown()


def hook_wrappers(trainer, records: dict) -> None:
    """A recording comm hook on every DDP wrapper: ``records[network]["syncs"]`` lists each backward's buckets
    as ``[bytes, seconds in training, seconds with the ranks aligned]``."""
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(rec, bucket):
        buffer, start = bucket.buffer(), time.perf_counter()
        fut = allreduce_hook(None, bucket)
        fut.wait()  # serialised with the backward: the all-reduce's own time, none of it hidden behind compute
        waited, start = time.perf_counter() - start, time.perf_counter()  # waited: also for the slower rank
        dist.all_reduce(buffer.clone())  # the ranks left the last one together: this is the transfer alone
        rec["current"].append([buffer.numel() * buffer.element_size(), waited, time.perf_counter() - start])
        if bucket.is_last():
            rec["syncs"].append(rec["current"])
            rec["current"] = []
        return fut

    # experiment=digits trains each network in one phase, through one wrapper: one record per network.
    for phase, wrappers in trainer.views.ddp.items():
        trained = next(p.networks for p in trainer.phases if p.name == phase)
        enabled = {id(p) for p in trainer.plans[phase].enable}  # what DDP registered: trainable in the phase
        for net, wrapper in zip(trained, wrappers):
            params = sum(p.numel() for p in net.module.parameters() if id(p) in enabled)
            records[net.name] = rec = {"phase": phase, "parameters": params, "syncs": [], "current": []}
            wrapper.register_comm_hook(rec, hook)


def measure_ddp(args) -> dict:
    import torch.multiprocessing as mp

    # Forked, the ranks start with what this process imported (seconds each); the evaluator needs torchmetrics.
    for module in ("alttrain.run.app", "alttrain.metrics.images"):
        importlib.import_module(module)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log(f"  ddp: {WORLD} gloo processes, experiment=digits, {args.ddp_steps} steps")
    with tempfile.TemporaryDirectory(prefix="bench_scaling_") as out:
        mp.start_processes(_rank_main, args=(port, out, args.threads, args.ddp_steps), nprocs=WORLD,
                           start_method="fork")
        records = json.loads(Path(out, "rank0.json").read_text())
    return {name: summarise(rec) for name, rec in records.items()}


def summarise(rec: dict) -> dict:
    syncs, updates = rec["syncs"], rec["updates"]
    totals = {sum(b[0] for b in sync) for sync in syncs}
    if len(totals) != 1:
        raise SystemExit(f"error: the bytes all-reduced differ between updates: {sorted(totals)}")
    per_update = totals.pop() * len(syncs) / updates
    timed = [b for sync in syncs[1:] or syncs for b in sync]  # DDP rebuilds its buckets after the first backward
    return {"phase": rec["phase"], "parameters": rec["parameters"], "bytes_per_update": per_update,
            "buckets_per_update": len(syncs[-1]), "allreduces_per_update": sum(map(len, syncs)) / updates,
            "gloo_s_per_allreduce": statistics.median(b[2] for b in timed),
            "gloo_s_in_training": statistics.median(b[1] for b in timed),
            "bytes_equal_4x_params": per_update == 4 * rec["parameters"]}


def ddp_lines(ddp: dict) -> list[str]:
    lines = [("| network | parameters | bytes all-reduced per update | buckets per update | all-reduces per update "
              "| gloo ms per all-reduce | gloo ms per all-reduce in training |"), "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {d['parameters']:,} | {d['bytes_per_update']:,.0f} | {d['buckets_per_update']} | "
              f"{d['allreduces_per_update']:g} | {d['gloo_s_per_allreduce'] * 1e3:.3f} | "
              f"{d['gloo_s_in_training'] * 1e3:.3f} |" for name, d in ddp.items()]
    checks = "; ".join(f"{name} {'=' if d['bytes_equal_4x_params'] else '!='} 4 x {d['parameters']:,} parameters"
                       for name, d in ddp.items())
    return [*lines, "", f"Bytes per update (float32 gradients): {checks}.",
            ("Buckets: the all-reduces of one backward; all-reduces per update: of all its micro-batches (equal: "
             "gradients sync once per update). Times: medians after the first update; in training includes the "
             "wait for the slower rank, the other column repeats the all-reduce with the ranks aligned.")]


# -- estimate: the main job on 8 GPUs ------------------------------------------------------------


def estimate(ddp: dict, step_s: float | None) -> dict:
    """Per all-reduce of a ring: 2 (N-1)/N * bytes / bandwidth + latency; no overlap with compute."""
    out = {}
    for link, (bandwidth, latency) in LINKS.items():
        per_update = {name: 2 * (GPUS - 1) / GPUS * d["bytes_per_update"] / bandwidth
                      + latency * d["allreduces_per_update"] for name, d in ddp.items()}
        per_step = sum(per_update.values())  # experiment=digits updates each network once per step
        out[link] = {"bandwidth": bandwidth, "latency": latency, "comm_s_per_update": per_update,
                     "comm_s_per_step": per_step, "min_compute_s_for_target": per_step * TARGET / (1 - TARGET),
                     "efficiency_at_cpu_step": step_s / (step_s + per_step) if step_s else None}
    return out


def estimate_lines(est: dict, step_s: float | None) -> list[str]:
    nets = list(next(iter(est.values()))["comm_s_per_update"])
    header = (f"| interconnect (assumed) | bus bandwidth | latency per all-reduce | "
              f"{' | '.join(f'{n} comm per update (us)' for n in nets)} | comm per step (us) | "
              f"min compute per step for {TARGET:.0%} efficiency (us) |")
    lines = [header, "|---|---:|---:|" + "---:|" * (len(nets) + 2)]
    for link, e in est.items():
        cells = " | ".join(f"{e['comm_s_per_update'][n] * 1e6:.0f}" for n in nets)
        lines.append(f"| {link} | {e['bandwidth'] / 1e9:g} GB/s | {e['latency'] * 1e6:g} us | {cells} | "
                     f"{e['comm_s_per_step'] * 1e6:.0f} | {e['min_compute_s_for_target'] * 1e6:.0f} |")
    cpu = ("not measured in this run (include 64 in --batches or 16 in --widths)" if step_s is None else
           f"{step_s * 1e3:.1f} ms; 8 GPUs each that slow would run at "
           + ", ".join(f"{e['efficiency_at_cpu_step']:.1%} ({link})" for link, e in est.items()))
    return [*lines, "", f"Measured: bytes and all-reduces per update (ddp part); the main job's step here: {cpu}.",
            (f"Assumed: {GPUS} GPUs; ring all-reduce, 2 (N-1)/N x bytes / bus bandwidth + latency each; the "
             "interconnects above; no overlap of communication with compute, so efficiency = compute / (compute + "
             "communication) is a lower bound. data.batch_size is per process: each GPU keeps batch 64, an update "
             f"trains on {GPUS * MAIN_JOB['batch_size']} samples. GPU compute is not measured: a step has to compute "
             "for at least the last column for the efficiency to stay above the target.")]


# -- driver --------------------------------------------------------------------------------------


def cpu_name() -> str:
    try:
        models = [line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
    except OSError:
        models = []
    return models[0].split(":", 1)[1].strip() if models else platform.processor() or platform.machine()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["compute", "ddp", "estimate", "all"], default="all",
                   help="estimate: the main job's step and the ddp part, then the estimate")
    p.add_argument("--threads", type=int, default=1, help="torch threads (of each rank in the ddp part)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per point (default: dcgan 30, mlp 1000)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: dcgan 5, mlp 100)")
    p.add_argument("--batches", type=ints, default=[16, 32, 64, 128, 256], help="DCGAN batch sizes at width 16")
    p.add_argument("--widths", type=ints, default=[8, 16, 32], help="DCGAN base widths at batch 64")
    p.add_argument("--mlp-batches", type=ints, default=[64, 256, 1024], help="ring8 MLP batch sizes ('' = none)")
    p.add_argument("--ddp-steps", type=int, default=6, help="steps of the two-process run (>= 2)")
    p.add_argument("--json", type=Path, default=None, help="write every number here")
    return p.parse_args(argv)


def measure(args) -> dict:
    results = {}
    if args.part in ("ddp", "estimate", "all"):  # first: its ranks are forked before this process runs kernels
        results["ddp"] = measure_ddp(args)
    if args.part in ("compute", "all"):
        results["compute"] = compute_grid(args)
    elif args.part == "estimate":
        results["compute"] = [measure_point(args, "dcgan", MAIN_JOB)]
    if args.part in ("estimate", "all"):
        results["estimate"] = estimate(results["ddp"], main_job_step_s(results["compute"]))
    return results


def report(args, results: dict) -> list[str]:
    machine = f"{cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} thread(s) per process"
    lines = [f"machine: {machine}", ""]
    if args.part in ("compute", "all"):
        lines += ["Measured: Trainer steps/s on this CPU (width: DCGAN base_width, MLP hidden_dim)", "",
                  *compute_table(results["compute"]), ""]
    if "ddp" in results:
        lines += [f"Measured: DDP all-reduces per update, experiment=digits on {WORLD} gloo processes on this CPU",
                  "", *ddp_lines(results["ddp"]), ""]
    if "estimate" in results:
        lines += [f"Estimated: experiment=digits on {GPUS} GPUs", "",
                  *estimate_lines(results["estimate"], main_job_step_s(results["compute"]))]
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = measure(args)
    print("\n".join(report(args, results)).rstrip())
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
