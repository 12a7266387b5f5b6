"""Console progress: a tqdm bar on a terminal, one plain line every few steps anywhere else.

Losses are device tensors; turning them into text is a host sync, so they are read only on the
steps that display them (``refresh_every`` for the bar, ``print_every`` for plain lines).
"""

from __future__ import annotations

import sys
import time

import torch

from alttrain.checks import check_choice, check_int
from alttrain.engine.hooks import Callback, PhaseResult

MODES = ("auto", "always", "never")


class ProgressBar(Callback):
    """Shows steps done out of ``trainer.max_steps``, the latest losses, the speed and an ETA.

    ``mode``: ``auto`` draws a bar when stderr is a terminal, ``always`` draws one anyway,
    ``never`` does not. Without a bar, one line per ``print_every`` completed steps (default: a
    tenth of the run), and at least one every ``print_seconds`` (default 60), goes to stderr, readable
    in CI and cluster logs, where a day-long run would otherwise be silent for hours; ``print_every=0``
    silences it. A displayed loss is the phase's last update of that step.

    Under ``trainer.on_nan=skip`` the first discarded update of each phase is announced when it
    happens, and the run's totals (``TrainState.skipped``) at the end; neither depends on ``mode``.
    """

    def __init__(self, mode: str = "auto", refresh_every: int = 20, print_every: int | None = None,
                 print_seconds: float = 60.0):
        check_choice("trainer.progress", mode, MODES)
        check_int("progress.refresh_every", refresh_every, 1)
        if print_every is not None:
            check_int("progress.print_every", print_every, 0)
        self.mode, self.refresh_every, self.print_every = mode, refresh_every, print_every
        self.print_seconds = print_seconds
        self.bar = None
        self._every = 0                            # completed-step interval at which losses are shown
        self._losses: dict[str, torch.Tensor] = {}
        self._start: tuple[float, int] = (0.0, 0)  # (wall time, completed steps) at train start
        self._last: tuple[float, int] = (0.0, 0)   # the same at the last printed line
        self._announced: set[str] = set()          # phases whose first discarded update was announced

    def on_train_start(self, trainer) -> None:
        use_bar = self.mode == "always" or (self.mode == "auto" and _is_terminal(sys.stderr))
        step = trainer.state.step
        self._start = self._last = (time.perf_counter(), step)
        self._losses.clear()
        self._announced.clear()
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=trainer.max_steps, initial=step, unit="step", dynamic_ncols=True,
                            file=sys.stderr, smoothing=0.1)
            self._every = self.refresh_every
        else:
            every = self.print_every if self.print_every is not None else max(1, trainer.max_steps // 10)
            self._every = every

    def on_phase_end(self, trainer, result: PhaseResult) -> None:
        if result.skipped and result.phase.name not in self._announced:
            name = result.phase.name
            self._announced.add(name)
            self._write(f"warning: step {result.step}: non-finite {name} update discarded (trainer.on_nan=skip); "
                        f"later ones are counted in skipped/{name} and in the total at the end")
        # Kept by reference (no host sync): a line may be printed at this step's end, by count or by time.
        if self._every:
            self._losses[result.phase.name] = result.loss

    def on_step_end(self, trainer) -> None:
        step = trainer.state.step
        due = self._every and step % self._every == 0
        if not due and self.bar is None and self._every and time.perf_counter() - self._last[0] >= self.print_seconds:
            due = True  # a slow run still says where it is, every print_seconds
        if not due:
            if self.bar is not None:
                self.bar.update(1)
            return
        losses = _format_losses(self._losses)
        self._losses.clear()
        if self.bar is not None:
            self.bar.set_postfix_str(_join(losses), refresh=False)
            self.bar.update(1)
        else:
            self._print_line(step, trainer.max_steps, losses)

    def _print_line(self, step: int, max_steps: int, losses: dict[str, str]) -> None:
        now = time.perf_counter()
        then, done = self._last
        rate = (step - done) / (now - then) if now > then else 0.0
        self._last = (now, step)
        eta = _duration((max_steps - step) / rate) if rate > 0 else "?"
        parts = [f"step {step}/{max_steps}", _join(losses), f"{rate:.3g} steps/s", f"eta {eta}"]
        print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)

    def on_train_end(self, trainer) -> None:
        if self.bar is None and self._every:
            elapsed = time.perf_counter() - self._start[0]
            print(f"done: {trainer.state.step - self._start[1]} steps in {_duration(elapsed)}, "
                  f"at step {trainer.state.step}/{trainer.max_steps}", file=sys.stderr, flush=True)
        self.close()
        skipped = {name: n for name, n in trainer.state.skipped.items() if n}
        if skipped:
            counts = ", ".join(f"{name} {n}" for name, n in skipped.items())
            self._write(f"warning: non-finite updates discarded (trainer.on_nan=skip), per phase: {counts}")

    def _write(self, line: str) -> None:
        """One line on stderr, above the bar when one is drawn."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def on_exception(self, trainer, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _format_losses(losses: dict[str, torch.Tensor]) -> dict[str, str]:
    if not losses:
        return {}
    values = torch.stack([v.detach().float().reshape(()) for v in losses.values()]).tolist()  # one host sync
    return {name: f"{value:.4g}" for name, value in zip(losses, values)}


def _join(losses: dict[str, str]) -> str:
    return " ".join(f"loss/{name}={value}" for name, value in losses.items())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _is_terminal(stream) -> bool:
    # Some replacements of sys.stderr (notebooks, log capture) have no isatty.
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
