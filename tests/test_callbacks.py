"""Callbacks on a tiny real Trainer: TensorBoard event files read back, sample pictures, console lines."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import after_the_event_files_second
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn
from torch.nn import functional as F

from alttrain import render
from alttrain.callbacks.loggers import LogCallback, TensorBoard
from alttrain.callbacks.progress import ProgressBar
from alttrain.callbacks.samples import SampleCallback
from alttrain.engine.batch import Batch, LatentPrior
from alttrain.engine.hooks import Callback, CallbackList, PhaseResult
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss
from alttrain.models.mlp import MLPDiscriminator, MLPGenerator

GROUPS = [{"name": "body", "params": ["body.*"]}, {"name": "head", "params": ["head.*"], "lr": 5e-4}]


def d_logistic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_logits).mean()


class BatchStream:
    """Endless batches of a fixed 2-D point cloud, from a private generator."""

    def __init__(self, batch_size: int = 8):
        self.gen = torch.Generator().manual_seed(7)
        self.batch_size = batch_size

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        return Batch(torch.randn(self.batch_size, 2, generator=self.gen) * 0.5 + 1.0)

    def state_dict(self) -> dict:
        return {}


class NoisyGenerator(MLPGenerator):
    """Draws from the global RNG in forward, like generators with per-pixel noise inputs."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return super().forward(z) + 0.01 * torch.randn_like(z[:, :2])


class Recorder(Callback):
    """Keeps every PhaseResult's loss, per step and phase."""

    def __init__(self):
        self.losses: dict[tuple[int, str], list[torch.Tensor]] = {}

    def on_phase_end(self, trainer, result) -> None:
        self.losses.setdefault((result.step, result.phase.name), []).append(result.loss.clone())


def make_trainer(callbacks=(), max_steps: int = 7, log_every: int = 3, d_repeat: int = 1,
                 generator_cls=MLPGenerator) -> Trainer:
    torch.manual_seed(0)
    gen = generator_cls(latent_dim=2, out_dim=2, hidden_dim=8, depth=1)
    disc = MLPDiscriminator(in_dim=2, hidden_dim=8, depth=1)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.99))
    g_net, d_net = build_network("G", gen, GROUPS, adam), build_network("D", disc, GROUPS, adam)
    phases = [Phase("D", d_net, DiscriminatorLoss(d_logistic, generator="G", discriminator="D"), repeat=d_repeat),
              Phase("G", g_net, GeneratorLoss(g_nonsaturating, generator="G", discriminator="D"))]
    return Trainer([d_net, g_net], phases, BatchStream(), max_steps=max_steps, callbacks=callbacks,
                   log_every=log_every)


def read_events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def steps_of(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]


def f32(x) -> float:
    return float(np.float32(x))


# -- TensorBoard ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """7 steps, logging every 3rd, D with repeat=2; samples every 3 steps into the same run."""
    root = tmp_path_factory.mktemp("run")
    logger = LogCallback([TensorBoard(root / "tb")], log_every=3,
                               text={"config": "model:\n  hidden: 8\n", "param_groups": "group lr\n```x```"},
                               hparams={"lr": 1e-3, "loss": "logistic", "repeat": 2, "ema": False})

    class Final(Callback):  # stands in for the metrics callback
        def on_train_end(self, trainer):
            logger.set_final_metrics({"modes": 3.0, "hq": 0.5})

    recorder = Recorder()
    trainer = make_trainer([recorder, Final()], d_repeat=2)
    samples = SampleCallback(root / "samples", every=3, generator_fn=lambda: trainer.network("G").module,
                             prior=LatentPrior((2,)), kind="points", num=50, logger=logger, size=64,
                             centers=torch.tensor([[1.0, 1.0], [-1.0, -1.0]]))
    trainer.callbacks = CallbackList([recorder, Final(), samples, logger])
    trainer.fit()
    return root, trainer, recorder, read_events(root / "tb")


def test_scalars_land_on_log_steps_only(logged_run):
    _, _, _, acc = logged_run
    tags = set(acc.Tags()["scalars"])
    expected = {"loss/D", "loss/G", "score/real", "score/fake", "score/fake_for_G", "grad_norm/D/body",
                "grad_norm/D/head", "grad_norm/G/body", "grad_norm/G/head", "lr/D/body", "lr/D/head",
                "lr/G/body", "lr/G/head", "time/steps_per_sec", "phase_updates/D", "phase_updates/G",
                "skipped/D", "skipped/G"}
    assert expected <= tags
    for tag in expected:
        assert steps_of(acc, tag) == [0, 3, 6], tag


def test_loss_is_mean_over_repeated_updates(logged_run):
    _, _, recorder, acc = logged_run
    for event in acc.Scalars("loss/D"):
        updates = recorder.losses[(event.step, "D")]
        assert len(updates) == 2
        assert event.value == f32(torch.stack(updates).mean())
    for event in acc.Scalars("loss/G"):
        assert event.value == f32(recorder.losses[(event.step, "G")][0])


def test_counters_and_learning_rates(logged_run):
    _, _, _, acc = logged_run
    # After steps 0..s: D made 2 updates per step, G one.
    assert [e.value for e in acc.Scalars("phase_updates/D")] == [2.0, 8.0, 14.0]
    assert [e.value for e in acc.Scalars("phase_updates/G")] == [1.0, 4.0, 7.0]
    assert [e.value for e in acc.Scalars("skipped/D")] == [0.0, 0.0, 0.0]
    assert {e.value for e in acc.Scalars("lr/D/body")} == {f32(1e-3)}
    assert {e.value for e in acc.Scalars("lr/G/head")} == {f32(5e-4)}
    assert all(e.value > 0 for e in acc.Scalars("time/steps_per_sec"))


def test_text_hparams_and_images_in_one_run(logged_run):
    root, trainer, _, acc = logged_run
    assert list((root / "tb").iterdir()) == [p for p in (root / "tb").iterdir() if p.is_file()]  # no subfolders
    assert len(list((root / "tb").glob("events.out.tfevents.*"))) == 1
    texts = {t: acc.Tensors(t)[0].tensor_proto.string_val[0].decode() for t in acc.Tags()["tensors"]
             if t.endswith("text_summary")}
    assert texts["config/text_summary"] == "```\nmodel:\n  hidden: 8\n\n```"
    assert texts["param_groups/text_summary"] == "````\ngroup lr\n```x```\n````"  # fence outlasts the text's
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert (hp["lr"].number_value, hp["loss"].string_value, hp["repeat"].number_value, hp["ema"].bool_value) \
        == (1e-3, "logistic", 2.0, False)
    assert [(e.step, e.value) for e in acc.Scalars("hparam/modes")] == [(7, 3.0)]
    assert [(e.step, e.value) for e in acc.Scalars("hparam/hq")] == [(7, 0.5)]
    assert [e.step for e in acc.Images("samples")] == [3, 6, 7]
    assert (acc.Images("samples")[0].width, acc.Images("samples")[0].height) == (64, 64)


def test_sample_files(logged_run):
    root, _, _, _ = logged_run
    names = sorted(p.name for p in (root / "samples").iterdir())
    assert names == ["final.png", "step_00000003.png", "step_00000006.png", "step_00000007.png"]
    with Image.open(root / "samples" / "final.png") as final, Image.open(root / "samples" / "step_00000007.png") as last:
        assert final.size == (64, 64) and final.mode == "RGB"
        assert np.array_equal(np.asarray(final), np.asarray(last))


def test_log_metrics_and_close_on_exception(tmp_path):
    logger = LogCallback([TensorBoard(tmp_path)], log_every=2)

    class Boom(Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == 3:
                logger.log_metrics({"fid": 12.5}, trainer.state.step)
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make_trainer([logger, Boom()], max_steps=10, log_every=2).fit()
    assert logger.loggers[0]._writer is None  # closed: everything is on disk
    acc = read_events(tmp_path)
    assert steps_of(acc, "loss/D") == [0, 2]
    assert [(e.step, e.value) for e in acc.Scalars("metric/fid")] == [(3, 12.5)]
    assert "grad_norm/D/body" in acc.Tags()["scalars"]


def test_logger_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="log_every"):
        LogCallback([TensorBoard(tmp_path)], log_every=0)
    with pytest.raises(ConfigError, match="'layers'"):
        LogCallback([TensorBoard(tmp_path)], log_every=1, hparams={"layers": [1, 2]})


def test_resume_purges_points_past_the_checkpoint(tmp_path):
    """A run crashed at step 10 after a checkpoint at 5; the resumed run rewrites steps 5 and 6."""
    first = LogCallback([TensorBoard(tmp_path)], log_every=1)

    class Metrics(Callback):
        def __init__(self, logger):
            self.logger = logger

        def on_step_end(self, trainer):
            if trainer.state.step in (5, 8):
                self.logger.log_metrics({"fid": float(trainer.state.step)}, trainer.state.step)

    make_trainer([first, Metrics(first)], max_steps=10, log_every=1).fit()
    after_the_event_files_second(tmp_path)  # so the resumed run's event file sorts after the first's
    resumed = LogCallback([TensorBoard(tmp_path)], log_every=1)
    trainer = make_trainer([resumed], max_steps=7, log_every=1)
    trainer.state.step = 5
    trainer.fit()
    acc = read_events(tmp_path)
    # Step 5 is kept from the first run (an exact resume writes the same value again); 7..9 are gone.
    assert steps_of(acc, "loss/D") == [0, 1, 2, 3, 4, 5, 5, 6]
    assert steps_of(acc, "metric/fid") == [5]  # written at the checkpoint step, before the crash


def test_logger_warns_when_grad_norms_cannot_appear(tmp_path):
    with pytest.warns(UserWarning, match="not a multiple of trainer.log_every=2"):
        make_trainer([LogCallback([TensorBoard(tmp_path)], log_every=3)], max_steps=1, log_every=2).fit()


# -- samples ----------------------------------------------------------------------------------------


def final_weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for net in trainer.networks for p in net.module.parameters()]


def test_sampling_leaves_training_bit_identical(tmp_path):
    plain = make_trainer(max_steps=6, generator_cls=NoisyGenerator)
    plain.fit()
    rng_plain = torch.get_rng_state()
    sampled = make_trainer(max_steps=6, generator_cls=NoisyGenerator)
    callback = SampleCallback(tmp_path, every=2, generator_fn=lambda: sampled.network("G").module,
                              prior=LatentPrior((2,)),
                              kind="points", num=100, size=32)
    sampled.callbacks = CallbackList([callback])
    sampled.fit()
    assert callback.last_step == 6
    assert all(torch.equal(a, b) for a, b in zip(final_weights(plain), final_weights(sampled)))
    assert torch.equal(rng_plain, torch.get_rng_state())


class Recording(nn.Module):
    """Image generator that notes the mode it was called in."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 16)
        self.inner = nn.Dropout(0.5)
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, self.inner.training, torch.is_grad_enabled()))
        return torch.tanh(self.inner(self.fc(z))).view(-1, 1, 4, 4)


def test_image_samples_fixed_noise_eval_mode_and_flags_restored(tmp_path):
    module = Recording()
    module.train()
    module.inner.eval()  # a submodule the user put in eval on purpose stays so
    callback = SampleCallback(tmp_path, every=1, generator_fn=lambda: module, prior=LatentPrior((3,)), kind="images", num=6)
    assert torch.equal(callback.noise, torch.randn(6, 3, generator=torch.Generator().manual_seed(1234)))
    first, second = callback.write(1), callback.write(2)
    assert module.calls == [(False, False, False)] * 2
    assert module.training and not module.inner.training
    assert torch.equal(first, second)  # same noise, same weights: same picture
    # 6 images of 4x4 in rows of 3 with 2-pixel padding; grey input becomes RGB.
    assert first.shape == (3, 2 * 6 + 2, 3 * 6 + 2) and first.dtype == torch.uint8
    with Image.open(tmp_path / "step_00000002.png") as png:
        assert png.size == (20, 14)


def test_sample_kind_checks(tmp_path):
    with pytest.raises(ConfigError, match="kind"):
        SampleCallback(tmp_path, every=1, generator_fn=Recording, prior=LatentPrior((3,)), kind="video")
    callback = SampleCallback(tmp_path, every=1, generator_fn=Recording, prior=LatentPrior((3,)), kind="points", num=4)
    with pytest.raises(ConfigError, match=r"\(N, 2\)"):
        callback.write(1)


# -- render -----------------------------------------------------------------------------------------


def test_image_grid_maps_and_clamps():
    images = torch.tensor([-3.0, -1.0, 0.0, 1.0, 2.0]).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    grid = render.image_grid(images, nrow=5, padding=0)
    assert grid.dtype == torch.uint8 and grid.shape == (3, 2, 10)
    assert grid[0, 0, ::2].tolist() == [0, 0, 128, 255, 255]  # 127.5 rounds half to even


def test_scatter_plot_places_points():
    extent = (-1.0, 1.0, -1.0, 1.0)
    image = render.scatter_plot(torch.tensor([[0.0, 0.0], [0.5, 0.5]]), size=101, extent=extent)
    assert image.dtype == torch.uint8 and image.shape == (3, 101, 101)
    assert tuple(image[:, 50, 50].tolist()) == render.SAMPLE_COLOR  # the centre of the extent
    assert tuple(image[:, 25, 75].tolist()) == render.SAMPLE_COLOR  # up and right: y grows upwards
    assert tuple(image[:, 75, 75].tolist()) == render.BACKGROUND
    assert tuple(image[:, 0, 40].tolist()) == render.FRAME_COLOR
    crossed = render.scatter_plot(torch.empty(0, 2), reference=torch.tensor([[0.5, -0.5]]),
                                  centers=torch.tensor([[0.0, 0.0]]), size=101, extent=extent)
    assert tuple(crossed[:, 50, 50].tolist()) == render.CENTER_COLOR
    assert tuple(crossed[:, 50, 53].tolist()) == render.CENTER_COLOR  # arm of the cross
    assert tuple(crossed[:, 75, 75].tolist()) == render.REFERENCE_COLOR


def test_auto_extent_is_square_with_margin():
    assert render.auto_extent(torch.tensor([[-1.0, 0.0], [1.0, 0.5]]), None) == pytest.approx((-1.2, 1.2, -0.95, 1.45))
    assert render.auto_extent(torch.tensor([[2.0, 3.0]])) == (1.0, 3.0, 2.0, 4.0)  # one point: unit half-width
    # the far edge falls in the last pixel, not outside the canvas
    assert render.to_pixels(torch.tensor([[1.0, -1.0], [float("nan"), 0.0]]), (-1.0, 1.0, -1.0, 1.0), 10) == ([9], [9])


def test_save_png_round_trip(tmp_path):
    image = torch.arange(2 * 3 * 4, dtype=torch.uint8).view(3, 2, 4) * 10
    path = render.save_png(image, tmp_path / "deep" / "x.png")
    with Image.open(path) as png:
        assert np.array_equal(np.asarray(png), image.permute(1, 2, 0).numpy())
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]  # no temporary file left
    with pytest.raises(ValueError, match="uint8"):
        render.save_png(image.float(), tmp_path / "y.png")


# -- progress ---------------------------------------------------------------------------------------


LINE = re.compile(r"^step (\d+)/(\d+)  loss/D=(\S+) loss/G=(\S+)  \S+ steps/s  eta \S+$")


def test_progress_prints_plain_lines_off_terminal(capsys):
    recorder = Recorder()
    make_trainer([recorder, ProgressBar(print_every=2)], max_steps=5).fit()
    lines = capsys.readouterr().err.strip().splitlines()
    parsed = [LINE.match(line) for line in lines[:-1]]
    assert all(parsed), lines
    assert [(int(m[1]), int(m[2])) for m in parsed] == [(2, 5), (4, 5)]
    for m in parsed:  # the loss shown is that of the step just completed
        step = int(m[1]) - 1
        assert m[3] == f"{recorder.losses[(step, 'D')][-1].item():.4g}"
        assert m[4] == f"{recorder.losses[(step, 'G')][-1].item():.4g}"
    assert lines[-1].startswith("done: 5 steps in ") and lines[-1].endswith("at step 5/5")


def test_progress_resumes_from_trainer_step(capsys):
    trainer = make_trainer([ProgressBar(mode="never", print_every=2)], max_steps=7)
    trainer.state.step = 3  # as after loading a checkpoint
    trainer.fit()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split("  ")[0] for line in lines[:-1]] == ["step 4/7", "step 6/7"]
    assert lines[-1].startswith("done: 4 steps in ")


def test_progress_bar_when_forced(capsys):
    bar = ProgressBar(mode="always", refresh_every=2)
    make_trainer([bar], max_steps=4).fit()
    err = capsys.readouterr().err
    assert "4/4" in err and "loss/D=" in err and "step 2/4" not in err
    assert bar.bar is None  # closed
    with pytest.raises(ConfigError, match="trainer.progress must be one of auto, always, never, got 'sometimes'"):
        ProgressBar(mode="sometimes")


@pytest.mark.parametrize("mode", ["always", "never"])
def test_progress_announces_discarded_updates(capsys, mode):
    bar = ProgressBar(mode=mode, print_every=0)  # silenced progress lines do not silence the warning
    trainer = make_trainer([bar], max_steps=3)
    g_phase = trainer.phases[1]
    bar.on_train_start(trainer)
    for step in (0, 1):  # two discarded G updates: announced once, as it happens
        bar.on_phase_end(trainer, PhaseResult(g_phase, step, torch.tensor(float("nan")), {}, skipped=True))
    trainer.state.skipped["G"] = 2
    bar.on_train_end(trainer)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: step 0: non-finite G update discarded (trainer.on_nan=skip); later ones are "
                        "counted in skipped/G and in the total at the end",
                        "warning: non-finite updates discarded (trainer.on_nan=skip), per phase: G 2"]


def test_without_a_terminal_a_line_is_printed_at_least_every_print_seconds(capsys):
    # print_every=1000 would print nothing in 4 steps; print_seconds=0 makes every step due by time.
    make_trainer([ProgressBar(mode="never", print_every=1000, print_seconds=0.0)], max_steps=4).fit()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("loss/D=" in line and "loss/G=" in line for line in lines)


def test_the_run_summary_names_the_run_dir_first_and_what_it_did_last(tmp_path, caplog):
    import logging

    from alttrain.callbacks.summary import RunSummary

    summary = RunSummary(tmp_path, lambda: {"fid": 9.2333, "classes_covered": 10.0}, lambda: tmp_path / "last.pt")
    with caplog.at_level(logging.INFO, logger="alttrain"):
        make_trainer([summary], max_steps=3).fit()
    lines = [r.getMessage() for r in caplog.records if r.name == "alttrain"]
    assert lines[0] == f"run dir: {tmp_path}  (watch it: tensorboard --logdir {tmp_path})"
    assert lines[-1].startswith("done at step 3/3: 3 steps in 0:0") and " steps/s; " in lines[-1]
    assert lines[-1].endswith(f"; fid 9.233, classes_covered 10; checkpoint {tmp_path / 'last.pt'}")
