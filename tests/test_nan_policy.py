"""Non-finite losses and gradients through the command line, under both ``trainer.on_nan`` policies.

The NaN comes from a loss term defined in a user module on PYTHONPATH and plugged in by
``_target_``: G's loss, poisoned on chosen calls, so the failing step is known exactly.
"""

import subprocess
import sys
import textwrap

import pytest
from conftest import RING8, ROOT, SCRIPTS, compose_config, env_with_pythonpath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alttrain.persist.checkpoint import (
    assert_finite,
    list_step_checkpoints,
    load_checkpoint,
)
from alttrain.run.app import train

TINY = (*RING8, "data.batch_size=64", "model.hidden_dim=32", "trainer.log_every=1",
        "trainer.sample_every=0", "metrics.num_samples=16", "trainer.progress=never")

POISON = textwrap.dedent('''
    import torch
    from alttrain.games.terms import GeneratorLoss

    class PoisonedGeneratorLoss(GeneratorLoss):
        """G's loss; on the listed calls (counted from 0 in this process) its loss or its gradient is NaN."""

        def __init__(self, fn, calls=(), where="loss"):
            super().__init__(fn)
            self.calls, self.where, self.count = set(calls), where, 0

        def __call__(self, game, batch):
            loss, scalars = super().__call__(game, batch)
            hit, self.count = self.count in self.calls, self.count + 1
            if hit and self.where == "loss":
                loss = loss * float("nan")
            elif hit:
                # Value 0, gradient NaN: d sqrt(|x|)/dx at x = 0 is inf * 0.
                fake, _ = game.fake(self.generator, game.batch_size)
                loss = loss + (fake - fake.detach()).abs().sqrt().sum()
            return loss, scalars
''')


def run_cli(tmp_path, run_dir, *overrides):
    (tmp_path / "poison.py").write_text(POISON)
    env = env_with_pythonpath(tmp_path, OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    command = [sys.executable, str(SCRIPTS / "train.py"), *TINY, "loss.g._target_=poison.PoisonedGeneratorLoss",
               *overrides, f"hydra.run.dir={run_dir}"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def files(root):
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("where, every, value", [
    ("loss", 50, "loss nan in phase 'G' at step 6"),
    # A finite loss with a NaN gradient: D's next loss is the first non-finite value the check before
    # the step-8 checkpoint finds; checked every update, the update itself is named.
    ("grad", 50, "loss nan in phase 'D' at step 7 (the first since step 4; trainer.nan_check_every=1"),
    ("grad", 1, "gradient (norm nan) in phase 'G' at step 6"),
])
def test_raise_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, where, every, value):
    run_dir = tmp_path / "run"
    overrides = ("trainer.max_steps=4", "trainer.checkpoint_every=4")
    train(compose_config(*TINY, *overrides), run_dir, overrides)
    checkpoints = files(run_dir / "checkpoints")
    # Resumed at step 4, G's third call is step 6; the next checkpoint would have been at step 8.
    proc = run_cli(tmp_path, run_dir, "trainer.max_steps=10", "trainer.checkpoint_every=4", f"resume={run_dir}",
                   "+loss.g.calls=[2]", f"+loss.g.where={where}", f"trainer.nan_check_every={every}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"non-finite {value}" in errors[0]
    assert files(run_dir / "checkpoints") == checkpoints  # last.pt and the step files untouched
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["step"] == 4
    assert_finite(ckpt, "last.pt")


def test_skip_discards_counts_logs_and_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(tmp_path, run_dir, "trainer.on_nan=skip", "trainer.max_steps=8", "trainer.checkpoint_every=2",
                   "+loss.g.calls=[2,5]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [  # the first discard of G as it happens, the totals at the end
        "warning: step 2: non-finite G update discarded (trainer.on_nan=skip); later ones are counted in "
        "skipped/G and in the total at the end",
        "warning: non-finite updates discarded (trainer.on_nan=skip), per phase: G 2"]
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("skipped/G")] == [
        (0, 0), (1, 0), (2, 1), (3, 1), (4, 1), (5, 2), (6, 2), (7, 2)]
    assert {e.value for e in acc.Scalars("skipped/D")} == {0}
    assert [e.step for e in acc.Scalars("loss/G")] == [0, 1, 3, 4, 6, 7]  # a discarded update has no loss point
    assert [e.value for e in acc.Scalars("phase_updates/G")][-1] == 6
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["skipped"] == {"D": 0, "G": 2}
    assert ckpt["trainer"]["phase_updates"] == {"D": 8, "G": 6}
    saved = list_step_checkpoints(run_dir / "checkpoints")
    assert len(saved) == 3
    for path in [*saved, run_dir / "checkpoints" / "last.pt"]:
        assert_finite(load_checkpoint(path), path)
