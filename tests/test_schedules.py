"""Learning-rate schedules: PiecewiseLinearLR's values, one step of schedule per trainer step, logs and checkpoints.

Expected learning rates are derived by hand from dyadic numbers (0.0625, 0.25, ...) so that every
comparison is exact.
"""

import io
import logging
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import RING8, compose_config, payload_of
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.optim import lr_scheduler

from alttrain.engine.hooks import Callback
from alttrain.engine.trainer import Trainer
from alttrain.errors import CheckpointError, ConfigError
from alttrain.persist.checkpoint import save_checkpoint, unstorable
from alttrain.run.app import train
from alttrain.run.build import build_components, build_scheduler
from alttrain.scale.schedules import PiecewiseLinearLR

PIECEWISE = "{_target_: alttrain.schedules.PiecewiseLinearLR, _partial_: true, points: [[0, 0.0], [2, 0.0], [6, 1.0]]}"
# G at lr 0.0625 under PIECEWISE: factor 0 up to step 2, then a quarter more per step up to 1 at step 6.
G_LR = [0.0, 0.0, 0.0, 0.015625, 0.03125, 0.046875, 0.0625, 0.0625]
D_LR = 1e-3  # the ring8 experiment's, unscheduled
SMALL = (*RING8, "data.batch_size=64", "model.hidden_dim=32", "trainer.sample_every=0", "metrics.num_samples=16",
         "trainer.progress=never", "trainer.checkpoint_every=0")
SCHEDULED = (*SMALL, "optim.generator.optimizer.lr=0.0625", f"optim.generator.scheduler={PIECEWISE}")


def sgd(*lrs):
    """SGD over one fresh parameter per learning rate (one param group each)."""
    return torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def lrs_over(scheduler, steps):
    """The learning rates of every group at steps 0..steps-1, stepping as the trainer does."""
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


# -- PiecewiseLinearLR --------------------------------------------------------------------------------


def test_piecewise_linear_values_by_hand_for_two_groups():
    opt = sgd(1.0, 0.25)
    sched = PiecewiseLinearLR(opt, [[2, 1.0], [6, 0.0], [8, 0.5]])
    # before the first point: its factor; between points: linear; at a point: its factor; after the last: its factor
    factors = [1.0, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0, 0.25, 0.5, 0.5, 0.5]
    assert lrs_over(sched, len(factors)) == [[f, f * 0.25] for f in factors]
    assert sched.base_lrs == [1.0, 0.25]


def test_piecewise_linear_with_one_point_is_a_constant_factor_and_float_steps_interpolate():
    assert lrs_over(PiecewiseLinearLR(sgd(0.5), [[3, 0.5]]), 5) == [[0.25]] * 5
    sched = PiecewiseLinearLR(sgd(1.0), [[0.5, 0.0], [2.5, 1.0]])
    assert [sched.factor(s) for s in (0, 0.5, 1.5, 2.5, 7)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_piecewise_linear_resumed_from_its_state_dict_continues_bit_exactly():
    points = [[0, 1.0], [7, 0.3], [11, 0.05]]  # factors that are not dyadic: rounding must agree too
    straight = PiecewiseLinearLR(sgd(2e-4, 1e-3), points)
    expected = lrs_over(straight, 14)
    first = PiecewiseLinearLR(sgd(2e-4, 1e-3), points)
    head = lrs_over(first, 5)
    # As a resumed run does it: build the scheduler (it sets step 0's lr), then load the optimizer and it.
    resumed = PiecewiseLinearLR(sgd(2e-4, 1e-3), points)
    resumed.optimizer.load_state_dict(first.optimizer.state_dict())
    resumed.load_state_dict(first.state_dict())
    assert head + lrs_over(resumed, 9) == expected


BAD_POINTS = [
    ([], "points must be a non-empty list of [step, factor] pairs"),
    ("0,1", "points must be a non-empty list"),
    ([[0, 1.0, 2.0]], "points[0] must be a [step, factor] pair, got [0, 1.0, 2.0]"),
    ([5], "points[0] must be a [step, factor] pair, got 5"),
    ([[5, 1.0], [2, 0.5]], "points[1] has step 2 after step 5; steps must strictly increase"),
    ([[0, 1.0], [0, 0.5]], "points[1] has step 0 after step 0"),
    ([[0, 1.0], [4, -0.5]], "points[1] has factor -0.5; factors must be numbers >= 0"),
    ([[-1, 1.0]], "points[0] has step -1; steps must be numbers >= 0"),
    ([[0, "high"]], "points[0] has factor 'high'"),
    ([[0, float("nan")]], "points[0] has factor nan"),
]


@pytest.mark.parametrize("points, fragment", BAD_POINTS, ids=[m.split(";")[0] for _, m in BAD_POINTS])
def test_bad_points_are_one_readable_config_error(points, fragment):
    opt = sgd(1.0)
    with pytest.raises(ConfigError) as info:
        PiecewiseLinearLR(opt, points)
    message = str(info.value)
    assert fragment in message and message.startswith("PiecewiseLinearLR points") and "\n" not in message
    assert opt.param_groups[0]["lr"] == 1.0 and "initial_lr" not in opt.param_groups[0]  # refused before it acted


# -- checkpoints hold only plain types ----------------------------------------------------------------


SCHEDULERS = {
    "PiecewiseLinearLR": lambda opt: PiecewiseLinearLR(opt, ((1, 1.0), (4, 0.25))),  # tuples in, lists out
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5),
    "LinearLR": lambda opt: lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=4),
    "MultiStepLR": lambda opt: lr_scheduler.MultiStepLR(opt, milestones=[1, 2], gamma=0.5),  # a Counter inside
    "OneCycleLR": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_state_loads_with_weights_only_and_resumes_exactly(name, tmp_path):
    sched = SCHEDULERS[name](sgd(0.1, 0.05))
    lrs_over(sched, 3)
    state = sched.state_dict()
    assert unstorable(state) is None
    save_checkpoint({"schedulers": {"generator": state}}, tmp_path / "ckpt.pt")  # refuses what weights_only would
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded == state
    twin = SCHEDULERS[name](sgd(0.1, 0.05))
    twin.optimizer.load_state_dict(sched.optimizer.state_dict())
    twin.load_state_dict(loaded)
    assert lrs_over(twin, 5) == lrs_over(sched, 5)


def test_piecewise_linear_state_is_plain_lists_and_numbers():
    sched = PiecewiseLinearLR(sgd(1.0), compose_config(f"optim.generator.scheduler={PIECEWISE}")
                              .optim.generator.scheduler.points)  # the config's ListConfig
    state = sched.state_dict()
    assert state["points"] == [[0, 0.0], [2, 0.0], [6, 1.0]]
    assert type(state["points"]) is list and all(type(p) is list for p in state["points"])
    assert [type(v) for p in state["points"] for v in p] == [int, float] * 3


# -- through the config ------------------------------------------------------------------------------


class LearningRates(Callback):
    """The lr each update used (per phase and step), the lrs after each step, and G's weights after each step."""

    def __init__(self):
        self.used: dict[tuple[str, int], list[float]] = {}
        self.after: list[dict[str, float]] = []
        self.g_weights: list[list[torch.Tensor]] = []

    def on_phase_end(self, trainer, result):
        lr = result.phase.networks[0].optimizer.param_groups[0]["lr"]
        self.used.setdefault((result.phase.name, result.step), []).append(lr)

    def on_step_end(self, trainer):
        self.after.append({n.name: n.optimizer.param_groups[0]["lr"] for n in trainer.networks})
        self.g_weights.append([p.detach().clone() for p in trainer.network("generator").module.parameters()])


def fit(cfg, steps, callbacks=()):
    comps = build_components(cfg)
    trainer = Trainer(list(comps.networks.values()), comps.phases, comps.data.stream(seed=cfg.seed), max_steps=steps,
                      callbacks=callbacks)
    initial = [p.detach().clone() for p in comps.generator.module.parameters()]
    trainer.fit()
    return trainer, initial


def test_a_scheduler_from_the_command_line_steps_once_per_trainer_step():
    cfg = compose_config(*SCHEDULED, "trainer.n_critic=2")  # 2 D updates per step: still one schedule step
    record = LearningRates()
    trainer, initial = fit(cfg, 8, [record])
    assert [record.used[("G", s)] for s in range(8)] == [[lr] for lr in G_LR]
    assert [record.used[("D", s)] for s in range(8)] == [[D_LR, D_LR]] * 8
    # After step s, G's optimizer holds step s + 1's lr; D keeps its own.
    assert [a["generator"] for a in record.after] == [*G_LR[1:], 0.0625]
    assert {a["discriminator"] for a in record.after} == {D_LR}
    assert trainer.network("generator").scheduler.last_epoch == 8
    assert trainer.network("discriminator").scheduler is None
    # The lr is what the updates really used: factor 0 leaves G bit-identical through step 2, then it moves.
    unchanged = [all(torch.equal(a, b) for a, b in zip(initial, w)) for w in record.g_weights]
    assert unchanged == [True, True, True, False, False, False, False, False]


def test_a_run_without_a_scheduler_keeps_every_lr_and_checkpoints_none():
    cfg = compose_config(*SMALL)
    assert cfg.optim.generator.scheduler is None and cfg.optim.discriminator.scheduler is None
    record = LearningRates()
    trainer, _ = fit(cfg, 3, [record])
    assert trainer.schedulers == [] and "schedulers" not in payload_of(trainer)
    assert record.after == [{"generator": 1e-3, "discriminator": 1e-3}] * 3  # ring8's lr for both


CONFIG_ERRORS = [
    ("{_target_: torch.optim.lr_scheduler.CosineAnnealingLR, T_max: 3}", "needs _partial_: true"),
    ("{_target_: torch.optim.lr_scheduler.CosineAnnealingLR, _partial_: true}",
     "optim.generator.scheduler needs T_max (arguments of torch.optim.lr_scheduler.CosineAnnealingLR)"),
    ("{_target_: torch.optim.lr_scheduler.ReduceLROnPlateau, _partial_: true}",
     "optim.generator.scheduler is ReduceLROnPlateau, which needs a metric"),
    ("{_target_: torch.nn.Identity, _partial_: true}", "must be a torch.optim.lr_scheduler.LRScheduler, got torch.nn"),
    ("{_target_: alttrain.schedules.PiecewiseLinearLR, _partial_: true, points: [[3, 1.0], [1, 0.5]]}",
     "optim.generator.scheduler: PiecewiseLinearLR points[1] has step 1 after step 3"),
    ("{_target_: torch.optim.lr_scheduler.LinearLR, _partial_: true, start_factor: 0}",
     "cannot build optim.generator.scheduler (torch.optim.lr_scheduler.LinearLR)"),
    ("cosine", "optim.generator.scheduler must be a config node with a _target_"),
]


@pytest.mark.parametrize("node, fragment", CONFIG_ERRORS, ids=[f for _, f in CONFIG_ERRORS])
def test_bad_scheduler_nodes_are_refused_naming_the_key(node, fragment):
    with pytest.raises(ConfigError) as info:
        build_components(compose_config(*SMALL, f"optim.generator.scheduler={node}"))
    assert fragment in str(info.value) and "\n" not in str(info.value)


class KeepsAFunction(PiecewiseLinearLR):
    """A scheduler whose state_dict() holds a function, which no weights_only checkpoint can hold."""

    def __init__(self, optimizer):
        self.on_step = print
        super().__init__(optimizer, [[0, 1.0]])


def test_a_scheduler_whose_state_a_checkpoint_cannot_hold_is_refused_when_built():
    node = OmegaConf.create({"_target_": f"{__name__}.KeepsAFunction", "_partial_": True})
    with pytest.raises(ConfigError) as info:
        build_scheduler("optim.generator.scheduler", node, sgd(1.0))
    assert str(info.value).startswith("optim.generator.scheduler: 'state_dict().on_step' is a builtins.")
    assert "weights_only=True" in str(info.value)


def test_a_trainer_refuses_a_plateau_scheduler_given_in_python():
    comps = build_components(compose_config(*SMALL))
    comps.networks["discriminator"].scheduler = lr_scheduler.ReduceLROnPlateau(comps.networks["discriminator"].optimizer)
    with pytest.raises(ConfigError, match="the scheduler of 'discriminator' is ReduceLROnPlateau"):
        Trainer(list(comps.networks.values()), comps.phases, comps.data.stream(seed=0), max_steps=1)


# -- TensorBoard and checkpoints of a real run ---------------------------------------------------------


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


@pytest.mark.parametrize("log_every", [1, 3])
def test_logged_lr_is_the_lr_the_step_used(tmp_path, log_every):
    overrides = (*SCHEDULED, "trainer.max_steps=8", f"trainer.log_every={log_every}")
    train(compose_config(*overrides), tmp_path, overrides)
    steps = range(0, 8, log_every)
    f32 = lambda x: float(np.float32(x))
    assert scalars(tmp_path, "lr/generator/all") == [(s, f32(G_LR[s])) for s in steps]
    assert scalars(tmp_path, "lr/discriminator/all") == [(s, f32(D_LR)) for s in steps]


def test_checkpoints_of_scheduled_runs_load_with_weights_only(tmp_path):
    multistep = "{_target_: torch.optim.lr_scheduler.MultiStepLR, _partial_: true, milestones: [2], gamma: 0.5}"
    overrides = (*SCHEDULED, f"optim.discriminator.scheduler={multistep}", "trainer.max_steps=4",
                 "trainer.log_every=2")
    train(compose_config(*overrides), tmp_path, overrides)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    g, d = ckpt["schedulers"]["generator"], ckpt["schedulers"]["discriminator"]
    assert g["points"] == [[0, 0.0], [2, 0.0], [6, 1.0]] and g["last_epoch"] == 4
    assert d["milestones"] == Counter({2: 1}) and d["last_epoch"] == 4
    # Saved as the lrs step 4 will use.
    assert ckpt["optimizers"]["generator"]["param_groups"][0]["lr"] == G_LR[4]
    assert ckpt["optimizers"]["discriminator"]["param_groups"][0]["lr"] == D_LR * 0.5


def test_resuming_a_checkpoint_without_the_runs_scheduler_is_refused(tmp_path):
    plain = (*SMALL, "trainer.max_steps=2", "trainer.log_every=1")
    train(compose_config(*plain), tmp_path, plain)
    resumed = (*SCHEDULED, "trainer.max_steps=4", "trainer.log_every=1", f"resume={tmp_path}")
    with pytest.raises(CheckpointError, match=r"holds none for it; resume with the original optim\.generator\.sched"):
        train(compose_config(*resumed), tmp_path, resumed)


# -- resume: progress from the checkpoint, settings from the config -----------------------------------


def resume_messages(tmp_path, caplog, first, then, steps=(2, 4)):
    """Train ``first`` for steps[0] steps, resume with ``then`` to steps[1]; the log and the last checkpoint."""
    head = (*first, f"trainer.max_steps={steps[0]}")
    train(compose_config(*head), tmp_path, head)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="alttrain"):
        tail = (*then, f"trainer.max_steps={steps[1]}", f"resume={tmp_path}")
        train(compose_config(*tail), tmp_path, tail)
    lines = [m for m in (r.getMessage() for r in caplog.records)
             if "checkpoint" in m and not m.startswith(("resumed from", "done at step"))]
    return lines, torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)


def test_an_unchanged_resume_reports_nothing(tmp_path, caplog):
    lines, _ = resume_messages(tmp_path, caplog, SCHEDULED, SCHEDULED)
    assert lines == []


def test_optimizer_settings_changed_on_resume_are_the_configs(tmp_path, caplog):
    changed = (*SMALL, "optim.generator.optimizer.lr=0.0005", "optim.discriminator.optimizer.betas=[0.5,0.9]")
    lines, ckpt = resume_messages(tmp_path, caplog, SMALL, changed)
    assert lines == ["optim.generator param group 'all': lr is 0.0005 in the config, 0.001 in the checkpoint; "
                     "using the config's",
                     "optim.discriminator param group 'all': betas is (0.5, 0.9) in the config, (0.0, 0.99) in the "
                     "checkpoint; using the config's"]
    g, d = (ckpt["optimizers"][n]["param_groups"][0] for n in ("generator", "discriminator"))
    assert g["lr"] == 0.0005 and tuple(d["betas"]) == (0.5, 0.9)
    assert ckpt["trainer"]["step"] == 4


def test_a_changed_schedule_on_resume_is_named_and_the_checkpoints_continues(tmp_path, caplog):
    other = PIECEWISE.replace("[6, 1.0]", "[8, 1.0]")
    changed = (*SMALL, "optim.generator.optimizer.lr=0.125", f"optim.generator.scheduler={other}")
    lines, ckpt = resume_messages(tmp_path, caplog, SCHEDULED, changed)
    assert lines == [
        "optim.generator param group 'all': lr 0.125 in the config, 0.0625 in the checkpoint; its scheduler "
        "continues from the checkpoint with the base lr 0.0625 (start a new run to change it)",
        "optim.generator.scheduler.points is [[0, 0.0], [2, 0.0], [8, 1.0]] in the config, [[0, 0.0], [2, 0.0], "
        "[6, 1.0]] in the checkpoint; a resumed schedule continues with the checkpoint's (start a new run to "
        "change it)"]
    assert ckpt["optimizers"]["generator"]["param_groups"][0]["lr"] == G_LR[4]  # the checkpoint's schedule
    assert ckpt["schedulers"]["generator"]["points"] == [[0, 0.0], [2, 0.0], [6, 1.0]]


def test_a_schedule_dropped_on_resume_ends_at_the_configs_constant_lr(tmp_path, caplog):
    lines, ckpt = resume_messages(tmp_path, caplog, SCHEDULED, (*SMALL, "optim.generator.optimizer.lr=0.0625"),
                                  steps=(4, 5))
    assert lines == [f"optim.generator param group 'all': lr is 0.0625 in the config, {G_LR[4]} in the checkpoint; "
                     "using the config's",
                     "the checkpoint's generator lr follows a scheduler that optim.generator.scheduler no longer "
                     "sets: from here on its lr is the config's constant"]
    assert ckpt["optimizers"]["generator"]["param_groups"][0]["lr"] == 0.0625 and "schedulers" not in ckpt


def test_switching_amsgrad_on_resume_is_one_readable_error(tmp_path):
    head = (*SMALL, "trainer.max_steps=2")
    train(compose_config(*head), tmp_path, head)
    tail = (*SMALL, "+optim.generator.optimizer.amsgrad=true", "trainer.max_steps=4", f"resume={tmp_path}")
    with pytest.raises(CheckpointError, match=r"optim\.generator param group 'all': amsgrad is True in the config, "
                                              r"False in the checkpoint, and .* does not fit the change; resume with amsgrad: False, or start"):
        train(compose_config(*tail), tmp_path, tail)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["trainer"]["step"] == 2
