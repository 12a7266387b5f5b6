"""Timing the implementations of :mod:`alttrain.benchmarks`: rates, in-process pairs, the G update, correctness.

An implementation is named by what it is (:data:`IMPLS`): the hand-written loop (``plain``: one G
forward per step, as pytorch/examples writes it; ``plain-separate``: one per update; ``plain-twin``: a
second ``plain``, the control whose pairing with ``plain`` shows how finely a pair resolves), alttrain's
Trainer (``alttrain`` with its default ``trainer.reuse_fakes``; ``-separate`` without it; ``-logged``
with TensorBoard and a progress bar; ``-compile`` with inductor) and Lightning (manual optimization,
``-logged`` as Lightning runs by default). Each is compared with the plain loop doing the same math.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
# Steps each framework block runs before its timed span: the start of a ``fit`` (opening a
# TensorBoard file and a progress bar; Lightning builds its whole Trainer) is paid once per run, not
# per step, so each block's fit is timed from the clock read after its first LEAD steps. On DCGAN
# one step is enough, and not nothing: the CPU clock counts every thread, TensorBoard's writer thread
# among them, and logged / bare DCGAN measured 0.970-0.974x timed from the fit's start, 0.981-0.992x
# after 1-3 steps.
LEAD = {"mlp": 5, "dcgan": 1}
# Likewise the end of a fit (the final non-finite check, closing the logger): each framework block
# runs one step after its timed span, as Lightning's does (see lightning_gan.run_lightning).
TAIL = 1


@dataclass(frozen=True)
class Impl:
    kind: str                  # plain | alttrain | lightning
    reuse: bool = True         # one G forward per step (the D update's fakes are the G update's)
    logged: bool = False       # TensorBoard every LOG_EVERY steps and a progress bar
    compile: str | None = None  # a torch.compile backend (alttrain only)

    @property
    def reference(self) -> str:
        """The plain loop that does this implementation's math."""
        return "plain" if self.reuse else "plain-separate"


IMPLS = {
    "plain": Impl("plain"), "plain-separate": Impl("plain", reuse=False), "plain-twin": Impl("plain"),
    "alttrain": Impl("alttrain"), "alttrain-logged": Impl("alttrain", logged=True),
    "alttrain-separate": Impl("alttrain", reuse=False),
    "alttrain-separate-logged": Impl("alttrain", reuse=False, logged=True),
    "alttrain-compile": Impl("alttrain", compile="inductor"),
    "lightning": Impl("lightning", reuse=False), "lightning-logged": Impl("lightning", reuse=False, logged=True),
}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device, now) -> float:
    """Seconds (of the clock ``now``) that ``run()`` takes, device work included."""
    sync(device)
    t0 = now()
    run()
    sync(device)
    return now() - t0


def clock_marks(marks: list[int], clock, device):
    """A Trainer callback whose ``times`` gets the clock read when ``trainer.state.step`` reaches each mark
    (a mark at the step a ``fit`` starts from: at its start, after the callbacks before this one)."""
    from alttrain.engine.hooks import Callback

    class ClockMarks(Callback):
        def __init__(self):
            self.marks, self.times = set(marks), []

        def on_train_start(self, trainer) -> None:  # a mark at the step fit starts from
            self.on_step_end(trainer)

        def on_step_end(self, trainer) -> None:
            if trainer.state.step in self.marks:
                sync(device)
                self.times.append(clock())

    return ClockMarks()


def block_timer(name: str, workload: str, warmup: int, device: str, seed: int, clock: str,
                log_dir: str) -> Callable[[int], float]:
    """Builds implementation ``name``, runs ``warmup`` steps, returns ``run(n)``: seconds of the next ``n`` steps.

    The plain loop is timed around ``n`` steps. A framework runs each block as one ``fit`` of
    ``LEAD + n + TAIL`` steps, timed between the clock reads after its step ``LEAD`` and ``LEAD + n``:
    alttrain's Trainer continues from where its last fit stopped; Lightning fits a fresh Trainer
    (the module's weights carry over, its optimizers start afresh: the same work per step).
    """
    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    impl, setup, now, lead = IMPLS[name], make_setup(workload, seed, device), CLOCKS[clock], LEAD[workload]
    logs = log_dir if impl.logged else None
    if impl.kind == "plain":
        loop = PlainLoop(setup, reuse_fakes=impl.reuse)
        loop.run(warmup)
        return lambda n: timed(lambda: loop.run(n), setup.device, now)
    if impl.kind == "lightning":
        from alttrain.benchmarks.lightning_gan import run_lightning

        run_lightning(setup, [warmup], clock=now, log_dir=logs)

        def lightning_block(n: int) -> float:
            first, last = run_lightning(setup, [lead, lead + n], clock=now, log_dir=logs)
            return last - first

        return lightning_block
    marks = clock_marks([], now, setup.device)
    trainer = alttrain_trainer(setup, max_steps=max(warmup, 1), log_dir=logs, callbacks=[marks],
                               reuse_fakes=impl.reuse, compile=impl.compile)
    trainer.fit()  # a compiled network compiles here, in its first step

    def alttrain_block(n: int) -> float:
        start = trainer.state.step
        marks.marks, marks.times = {start + lead, start + lead + n}, []
        trainer.max_steps = start + lead + n + TAIL
        trainer.fit()
        return marks.times[1] - marks.times[0]

    return alttrain_block


def time_impl(impl: str, workload: str, steps: int, warmup: int, device: str, seed: int, clock: str,
              blocks: int = 10) -> dict:
    """Steps/s of ``impl`` on ``workload``: ``steps`` steps after ``warmup`` untimed ones, in ``blocks``.

    ``steps_per_s`` is the median block's rate: a burst of work from another process slows one
    block, not the result.
    """
    block = max(1, steps // blocks)
    with tempfile.TemporaryDirectory(prefix="bench_logs_") as tmp:
        run = block_timer(impl, workload, warmup, device, seed, clock, tmp)
        spans = [run(block) for _ in range(blocks)]
    return {"steps_per_s": block / statistics.median(spans), "mean_steps_per_s": block * len(spans) / sum(spans)}


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
        run = {impl: block_timer(impl, workload, warmup, device, seed, clock, f"{tmp}/{impl}")
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

    setup, now = make_setup(workload, seed, device), CLOCKS[clock]
    loop = PlainLoop(setup, reuse_fakes=False)  # G's own forward in its update: the whole update is timed
    loop.run(warmup)
    times = {True: [], False: []}
    per_block = max(1, steps // blocks)
    for block in range(2 * blocks):
        loop.freeze_d = block % 2 == 0  # the math is the same either way: only the cost differs
        for _ in range(per_block):
            loop.d_step()
            times[loop.freeze_d].append(timed(loop.g_step, setup.device, now))
    return {"g_frozen_s": statistics.median(times[True]), "g_trainable_s": statistics.median(times[False])}


def check_weights(workload: str, impls: list[str], steps: int, device: str, seed: int) -> dict:
    """Largest |difference| of every parameter and buffer from the plain loop doing the same math."""
    from alttrain.benchmarks import alttrain_trainer, make_setup
    from alttrain.benchmarks.plain_loop import PlainLoop

    def final_state(name: str) -> dict:
        impl, setup = IMPLS[name], make_setup(workload, seed, device)
        if impl.kind == "plain":
            PlainLoop(setup, reuse_fakes=impl.reuse).run(steps)
        elif impl.kind == "alttrain":
            alttrain_trainer(setup, max_steps=steps, reuse_fakes=impl.reuse, compile=impl.compile).fit()
        else:
            from alttrain.benchmarks.lightning_gan import fit_lightning

            fit_lightning(setup, steps)
        return {**{f"G.{k}": v for k, v in setup.generator.state_dict().items()},
                **{f"D.{k}": v for k, v in setup.discriminator.state_dict().items()}}

    references = {ref: final_state(ref) for ref in {IMPLS[i].reference for i in impls}}
    out = {}
    for name in impls:  # logging changes no number: a logged run is its bare twin's math
        if IMPLS[name].kind != "plain" and not IMPLS[name].logged:
            state, reference = final_state(name), references[IMPLS[name].reference]
            out[name] = max((state[k].double() - v.double()).abs().max().item() for k, v in reference.items())
    return {"max_abs_diff": out}
