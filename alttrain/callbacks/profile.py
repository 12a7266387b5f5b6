"""See where a step goes: a few steps recorded with ``torch.profiler`` (``trainer.profile=true``).

After ``wait`` steps (the first step compiles and allocates) and ``warmup`` more, ``active`` steps
are recorded with every update inside a ``phase/<name>`` range. The run dir gets ``profile/trace.json``
(open it in https://ui.perfetto.dev or chrome://tracing), and the console a table per phase of the
operators that took the most time in it (their own time, children excluded), and one for the whole
step. Recording slows the recorded steps; the rest of the run is untouched.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from alttrain.checks import check_int
from alttrain.engine.hooks import Callback

log = logging.getLogger("alttrain")
PHASE = "phase/"


class ProfileCallback(Callback):
    """Records steps ``wait + warmup`` .. ``wait + warmup + active`` of the run (counted from its start)."""

    def __init__(self, out_dir: str | Path, wait: int = 1, warmup: int = 1, active: int = 3, top: int = 8):
        self.out_dir = Path(out_dir)
        self.wait, self.warmup = check_int("profile wait", wait, 0), check_int("profile warmup", warmup, 0)
        self.active, self.top = check_int("profile active", active, 1), check_int("profile top", top, 1)
        self.profiler = None
        self._steps = 0
        self.tables: dict[str, list[tuple[str, float, int]]] = {}  # phase -> [(op, self seconds, calls)]

    def on_train_start(self, trainer) -> None:
        import torch

        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        schedule = torch.profiler.schedule(wait=self.wait, warmup=self.warmup, active=self.active, repeat=1)
        self.profiler = torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=self._ready)
        self.profiler.start()
        trainer.profiling = True
        self._trainer = trainer

    def on_step_end(self, trainer) -> None:
        if self.profiler is not None:
            self.profiler.step()
            self._steps += 1

    def on_train_end(self, trainer) -> None:
        self._stop(trainer)
        for phase, rows in self.tables.items():
            lines = [f"{'op':44s} {'self ms/step':>12s} {'calls/step':>10s}"]
            lines += [f"{op[:44]:44s} {1e3 * sec / self.active:12.3f} {calls / self.active:10.1f}" for op, sec, calls in rows]
            log.info("profile of %s, %d steps (top %d ops by own time):\n%s", phase, self.active, self.top,
                     "\n".join(lines))
        if self.tables:
            log.info("profile trace: %s (open it in https://ui.perfetto.dev)", self.out_dir / "trace.json")

    def on_exception(self, trainer, exc: BaseException) -> None:
        self._stop(trainer)

    def _stop(self, trainer) -> None:
        if self.profiler is not None:
            profiler, self.profiler = self.profiler, None
            profiler.stop()
        trainer.profiling = False

    def _ready(self, profiler) -> None:
        """The recording is complete: write the trace, tabulate the ops by phase, stop labelling updates."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.out_dir / "trace.json"))
        self.tables = top_ops_by_phase(profiler.events(), self.top)
        self._trainer.profiling = False


def top_ops_by_phase(events, top: int) -> dict[str, list[tuple[str, float, int]]]:
    """``{phase or "step": [(op, self seconds, calls)]}``: each op's own CPU time, by the phase range it ran in."""
    seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for event in events:
        if event.name.startswith(PHASE) or event.name.startswith("ProfilerStep"):
            continue
        parent, phase = event.cpu_parent, "outside the phases"
        while parent is not None:
            if parent.name.startswith(PHASE):
                phase = parent.name[len(PHASE):]
                break
            parent = parent.cpu_parent
        for where in (phase, "the whole step"):
            seconds[where][event.name] += event.self_cpu_time_total / 1e6  # microseconds in the profiler
            calls[where][event.name] += 1
    return {where: sorted(((op, sec, calls[where][op]) for op, sec in ops.items()), key=lambda r: -r[1])[:top]
            for where, ops in seconds.items()}
