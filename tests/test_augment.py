"""Differentiable augmentation: each transform's exact effect, gradients through it, ADA's p rule, and
real runs (augment=diffaug / augment=ada) that resume bit-exactly, log p and pass the idle audit."""

import os
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import RING8, assert_identical, compose_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alttrain.augment import ADAController, AdaptiveAugment, DiffAugment
from alttrain.engine.hooks import PhaseResult
from alttrain.errors import ConfigError
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.run.app import train
from alttrain.run.build import build_components
from alttrain.run.cli import report_user_errors
from alttrain.run.config import validate_config

OFF = {"translation": 0.0, "cutout": 0.0, "brightness": 0.0, "saturation": 0.0, "contrast": 0.0}
ADA_OFF = {"xflip": False, "rotate90": False, "translation": 0.0, "scale": 0.0, "rotate": 0.0, "shift": 0.0,
           "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "cutout": 0.0}


def numbered(n=16, c=1, h=8, w=8):
    """Images whose pixels are 1, 2, 3, ... (all distinct and nonzero), so every move can be traced."""
    return torch.arange(1, n * c * h * w + 1, dtype=torch.float32).reshape(n, c, h, w)


def shifted_zero(img, dy, dx):
    """Reference: ``img`` (C, H, W) moved by (dy, dx) whole pixels, zeros shifted in (plain loops)."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i - dy < h and 0 <= j - dx < w:
                out[:, i, j] = img[:, i - dy, j - dx]
    return out


def matching_shifts(out, img, reach, reference):
    return [(dy, dx) for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
            if torch.equal(out, reference(img, dy, dx))]


# -- DiffAugment, one transform at a time ---------------------------------------------------------------


def test_translation_moves_each_image_by_whole_pixels_with_zeros_shifted_in():
    x = numbered()
    out = DiffAugment(**{**OFF, "translation": 0.25}, seed=3)(x)  # up to round(8 * 0.25) = 2 pixels
    shifts = []
    for img, moved in zip(x, out):
        found = matching_shifts(moved, img, 2, shifted_zero)
        assert len(found) == 1, found  # exactly one shift in [-2, 2]^2 explains the output
        shifts.append(found[0])
    assert len(set(shifts)) > 4  # drawn per image
    assert any(dy and dx for dy, dx in shifts)


def test_cutout_zeroes_exactly_one_square_of_the_given_side():
    x = torch.ones(32, 1, 8, 8)
    out = DiffAugment(**{**OFF, "cutout": 0.5}, seed=0)(x)  # a 4x4 square, possibly cut by the edge
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    whole = 0
    for img in out[:, 0]:
        rows, cols = (img == 0).nonzero(as_tuple=True)
        top, left, bottom, right = rows.min(), cols.min(), rows.max(), cols.max()
        # The zeros fill their bounding box, which is the 4x4 square clipped to the image.
        assert (img[top:bottom + 1, left:right + 1] == 0).all() and (img == 0).sum() == len(rows)
        height, width = int(bottom - top + 1), int(right - left + 1)
        assert height <= 4 and width <= 4
        assert height == 4 or top == 0 or bottom == 7
        assert width == 4 or left == 0 or right == 7
        whole += height == width == 4
    assert 0 < whole < 32  # squares inside the image and squares cut by its edge both occur


def test_brightness_adds_one_bounded_offset_per_image():
    out = DiffAugment(**{**OFF, "brightness": 0.5}, seed=0)(torch.zeros(16, 3, 4, 4))
    offsets = out.flatten(1)
    assert torch.equal(offsets, offsets[:, :1].expand_as(offsets))  # one value per image
    assert offsets.abs().max() <= 0.5 and offsets[:, 0].unique().numel() == 16


def test_saturation_and_contrast_scale_distances_to_their_means():
    x = torch.randn(16, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    sat = DiffAugment(**{**OFF, "saturation": 1.0}, seed=1)(x)
    mean = x.mean(dim=1, keepdim=True)
    factor = ((sat - mean) / (x - mean)).flatten(1)
    torch.testing.assert_close(factor, factor[:, :1].expand_as(factor))  # one factor per image
    torch.testing.assert_close(sat.mean(dim=1), x.mean(dim=1))  # each pixel's channel mean is kept
    assert factor.min() >= 0 and factor.max() <= 2
    con = DiffAugment(**{**OFF, "contrast": 0.5}, seed=1)(x)
    factor = ((con - x.mean((1, 2, 3), keepdim=True)) / (x - x.mean((1, 2, 3), keepdim=True))).flatten(1)
    torch.testing.assert_close(factor, factor[:, :1].expand_as(factor))
    assert factor.min() >= 0.5 and factor.max() <= 1.5
    torch.testing.assert_close(con.mean((1, 2, 3)), x.mean((1, 2, 3)))


@pytest.mark.parametrize("name", list(OFF))
def test_gradients_flow_through_each_diffaugment_transform_into_the_generator(name):
    generator = torch.nn.Linear(4, 3 * 8 * 8)
    z = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    image = generator(z).view(8, 3, 8, 8)
    image.retain_grad()
    strength = {"translation": 0.25, "cutout": 0.5, "brightness": 0.5, "saturation": 1.0, "contrast": 0.5}[name]
    out = DiffAugment(**{**OFF, name: strength}, seed=0)(image)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert generator.weight.grad.abs().sum() > 0
    if name == "cutout":  # d out / d x is exactly the mask of the pixels kept
        assert torch.equal(image.grad != 0, out != 0)


def test_same_seed_same_draws_other_rank_other_draws_and_the_global_rng_untouched():
    x = numbered(c=3)
    before = torch.get_rng_state()
    a, b, c = DiffAugment(seed=5), DiffAugment(seed=5), DiffAugment(seed=5, rank=1)
    first = a(x)
    assert torch.equal(first, b(x)) and not torch.equal(first, c(x))
    assert not torch.equal(first, a(x))  # every call draws anew
    assert torch.equal(torch.get_rng_state(), before)
    # The state is the call count: restoring it replays the stream.
    state, expected = a.state_dict(), a(x)
    fresh = DiffAugment(seed=5)
    fresh.load_state_dict(state)
    assert state == {"kind": "diffaug", "calls": 2} and torch.equal(fresh(x), expected)


# -- the ADA pipeline -----------------------------------------------------------------------------------


def test_ada_at_p_zero_is_the_identity_exactly():
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    aug = AdaptiveAugment(cutout=0.5, p=0.0, seed=0)  # every transform on
    assert all(torch.equal(aug(x), x) for _ in range(3))


def test_ada_integer_moves_at_p_one_are_exact_flips_quarter_turns_and_mirrored_shifts():
    x = numbered(n=32)
    assert torch.equal(AdaptiveAugment(**{**ADA_OFF, "xflip": True}, p=1.0)(x), x.flip(-1))
    turned = AdaptiveAugment(**{**ADA_OFF, "rotate90": True}, p=1.0, seed=1)(x)
    turns = [[k for k in range(4) if torch.equal(o, torch.rot90(i, k, dims=(1, 2)))] for i, o in zip(x, turned)]
    assert all(len(k) == 1 for k in turns) and {k[0] for k in turns} == {0, 1, 2, 3}

    def shifted_mirror(img, dy, dx):
        pad = F.pad(img.unsqueeze(0), (2, 2, 2, 2), mode="reflect")[0]
        return pad[:, 2 - dy:2 - dy + 8, 2 - dx:2 - dx + 8]

    moved = AdaptiveAugment(**{**ADA_OFF, "translation": 0.25}, p=1.0, seed=2)(x)
    shifts = [matching_shifts(o, i, 2, shifted_mirror) for i, o in zip(x, moved)]
    assert all(len(s) == 1 for s in shifts) and len({s[0] for s in shifts}) > 4


def test_the_warp_matrix_moves_content_by_the_given_pixels_and_turns_it_about_the_centre():
    from alttrain.augment.ada import _inverse_affine

    x = torch.randn(1, 1, 6, 10, generator=torch.Generator().manual_seed(0))

    def warp(log2_scale, angle, t):
        theta = _inverse_affine(torch.tensor([log2_scale]), torch.tensor([angle]), torch.tensor([t]), 6, 10)
        return F.grid_sample(x, F.affine_grid(theta, [1, 1, 6, 10], align_corners=False), align_corners=False)

    torch.testing.assert_close(warp(0.0, 0.0, [2.0, 0.0])[..., 2:], x[..., :-2])  # two pixels right
    torch.testing.assert_close(warp(0.0, 0.0, [0.0, -1.0])[..., :-1, :], x[..., 1:, :])  # one pixel up
    torch.testing.assert_close(warp(0.0, torch.pi, [0.0, 0.0]), x.flip(2, 3), atol=1e-5, rtol=0)  # a half turn


def test_the_bilinear_warp_changes_exactly_the_images_it_picks():
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = AdaptiveAugment(**{**ADA_OFF, "scale": 0.2, "rotate": 1.0, "shift": 0.125}, p=0.5, seed=0)(x)
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert 2 <= int(same.sum()) <= 16  # each of the three picks half; 0.5^3 of 64 = 8 left alone on average
    assert all((o - i).abs().max() > 1e-3 for o, i, s in zip(out, x, same) if not s)


def test_ada_applies_each_transform_to_about_p_of_the_images():
    x = torch.randn(2000, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = AdaptiveAugment(**{**ADA_OFF, "brightness": 0.2}, p=0.3, seed=0)(x)
    changed = (out != x).flatten(1).any(1).float().mean().item()
    assert 0.26 < changed < 0.34  # binomial(2000, 0.3): 6 standard deviations either side


def test_gradients_and_second_derivatives_flow_through_the_full_ada_pipeline():
    disc = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Softplus(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 1))
    x = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    aug = AdaptiveAugment(cutout=0.5, p=1.0, seed=0)
    # R1 through the augmentation: d/dtheta ||d D(aug(x)) / dx||^2 (bilinear warp included).
    (grad,) = torch.autograd.grad(disc(aug(x)).sum(), x, create_graph=True)
    assert grad.abs().sum() > 0
    grad.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in disc.parameters() if p.dim() > 1)


# -- ADA's controller -----------------------------------------------------------------------------------


def controller_after(logits, updates, p=0.5):
    pipeline = AdaptiveAugment(p=p)
    # 64 reals per update, 4 updates per adjustment: 256 / 1024 = a step of exactly 0.25.
    ctrl = ADAController(pipeline, phase="D", target=0.6, interval=4, speed_samples=1024)
    trainer = SimpleNamespace(world_size=1)
    phase = SimpleNamespace(name="D", accumulate=1)
    for step in range(updates):
        ctrl.on_phase_end(trainer, PhaseResult(phase, step, torch.tensor(0.0), {"score/real": logits}))
        ctrl.on_phase_end(trainer, PhaseResult(SimpleNamespace(name="G", accumulate=1), step, torch.tensor(0.0),
                                               {"score/real": -logits}))  # another phase: not counted
    return pipeline.p


def test_p_moves_up_when_d_is_sure_of_every_real_and_down_when_it_is_not_by_the_exact_step():
    positive, negative = torch.full((64,), 3.0), torch.full((64,), -0.1)
    assert torch.equal(controller_after(positive, 3), torch.tensor(0.5))  # no adjustment before 4 updates
    assert torch.equal(controller_after(positive, 4), torch.tensor(0.75))
    assert torch.equal(controller_after(positive, 8), torch.tensor(1.0))
    assert torch.equal(controller_after(positive, 12), torch.tensor(1.0))  # clamped
    assert torch.equal(controller_after(negative, 4), torch.tensor(0.25))
    assert torch.equal(controller_after(negative, 12), torch.tensor(0.0))
    mixed = torch.cat([torch.ones(32), -torch.ones(32)])  # r_t = 0 < 0.6
    assert torch.equal(controller_after(mixed, 4), torch.tensor(0.25))


def test_resume_restores_p_and_the_stream_and_refuses_another_kind(caplog):
    from alttrain.errors import CheckpointError
    from alttrain.persist.resume import restore_transforms

    x = numbered()
    saved = AdaptiveAugment(p=0.5, seed=1)
    saved(x)
    saved.p.fill_(0.75)
    fresh = AdaptiveAugment(seed=1)
    restore_transforms(SimpleNamespace(transforms={"discriminator": fresh}), {"discriminator": saved.state_dict()})
    assert torch.equal(fresh.p, torch.tensor(0.75)) and torch.equal(fresh(x), saved(x))
    # Switched on at resume: a fresh start, said in the log.
    restore_transforms(SimpleNamespace(transforms={"discriminator": AdaptiveAugment()}), {})
    assert "holds no augmentation state for discriminator" in caplog.text
    with pytest.raises(CheckpointError, match="augmentation is diffaug, this run's is ada; resume with augment=diffaug"):
        restore_transforms(SimpleNamespace(transforms={"discriminator": AdaptiveAugment()}),
                           {"discriminator": DiffAugment().state_dict()})


# -- real runs through the entry point ------------------------------------------------------------------

TINY = ("experiment=digits", "data.batch_size=16", "model.base_width=8", "model.latent_dim=16",
        "trainer.log_every=1", "trainer.sample_every=0", "metrics.num_samples=16", "trainer.progress=never")
# p starts at 0.25 and moves by 16 / 64 = 0.25 at every D update, so it changes across the resume.
ADA = ("augment=ada", "augment.ada.p=0.25", "augment.ada.interval=1", "augment.ada.speed_samples=64",
       "augment.transforms.cutout=0.25")
N = 8


# Tiny networks on a shared machine: a second intra-op thread only contends (runs take 5x longer).
pytestmark = pytest.mark.usefixtures("one_thread")


def run(run_dir, *overrides):
    overrides = (*TINY, *overrides)
    return train(compose_config(*overrides), run_dir, overrides)


def scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else None


def test_an_ada_run_resumed_halfway_equals_a_straight_run_and_logs_p_and_rt(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    metrics = run(straight, *ADA, f"trainer.max_steps={N}")
    run(split, *ADA, f"trainer.max_steps={N // 2}")
    half = load_checkpoint(split / "checkpoints" / "last.pt")
    resumed_metrics = run(split, *ADA, f"trainer.max_steps={N}", f"resume={split}")
    a, b = load_checkpoint(split / "checkpoints" / "last.pt"), load_checkpoint(straight / "checkpoints" / "last.pt")
    for key in ("models", "optimizers", "trainer", "data", "precision", "rng", "augment", "callbacks"):
        compared = assert_identical(a[key], b[key], key)
        assert key not in ("models", "optimizers", "augment") or compared > 0
    assert resumed_metrics == metrics
    p_half, p_end = half["augment"]["discriminator"]["p"], b["augment"]["discriminator"]["p"]
    assert not torch.equal(p_half, p_end) and torch.equal(a["augment"]["discriminator"]["p"], p_end)
    assert b["augment"]["discriminator"]["calls"] == 3 * N  # D on reals and fakes, G on fakes, per step
    # augment/p and augment/rt reach TensorBoard, every log step, as one curve across the resume.
    for tag in ("augment/p", "augment/rt"):
        logged = scalars(straight, tag)
        assert [s for s, _ in logged] == list(range(N)), tag
        assert scalars(split, tag) == logged, tag
    # One D update of 16 reals per log step: r_t is a mean of 16 signs; p moves in steps of 16 / 64.
    assert all(-1 <= v <= 1 and v * 8 == round(v * 8) for _, v in scalars(straight, "augment/rt"))
    p_logged = [v for _, v in scalars(straight, "augment/p")]
    assert all(v * 4 == round(v * 4) for v in p_logged) and len(set(p_logged)) > 1
    assert p_logged[-1] == float(p_end)


FIXED_P_ONE = ("augment=ada", "augment.ada.p=1.0", "augment.ada.target=null", "augment.transforms.cutout=0.5")


@pytest.mark.parametrize("augment", [("augment=diffaug",), FIXED_P_ONE], ids=["diffaug", "ada_p1"])
def test_the_idle_audit_passes_with_augmentation_and_an_r1_phase(tmp_path, augment):
    run(tmp_path, *augment, "trainer.max_steps=3", "trainer.audit=true",
        "+trainer.phases.R1={network: discriminator, loss: r1, every: 2, weight: 2}")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["phase_updates"] == {"D": 3, "G": 3, "R1": 2}
    if "augment=ada" in augment:
        assert torch.equal(ckpt["augment"]["discriminator"]["p"], torch.tensor(1.0))  # target null: fixed p


# -- config -------------------------------------------------------------------------------------------------


def test_every_augment_option_composes_and_builds():
    for option, kind in (("none", None), ("diffaug", DiffAugment), ("ada", AdaptiveAugment)):
        comps = build_components(compose_config(f"augment={option}", "debug=default"))
        if kind is None:
            assert comps.transforms == {} and comps.adaptive is None
        else:
            assert list(comps.transforms) == ["discriminator"] and isinstance(comps.transforms["discriminator"], kind)
            assert (comps.adaptive is not None) == (option == "ada")


@pytest.mark.parametrize("overrides, message", [
    (("augment=ada", "augment.ada.target=1.5"), "augment.ada.target must be a number in [0, 1), got 1.5"),
    (("augment=ada", "augment.ada.interval=0"), "augment.ada.interval must be an integer >= 1, got 0"),
    (("augment=ada", "augment.ada.phase=X"), "augment.ada.phase is 'X', which is not a phase"),
    (("augment=diffaug", "augment.transforms.cutout=2"), "augment.transforms.cutout must be a number in [0, 1]"),
    (("augment=diffaug", "+augment.transforms.hue=1"), "unknown config key 'augment.transforms.hue'"),
    (("augment=ada", "augment.transforms.xflip=1"), "augment.transforms.xflip must be true or false"),
    (("augment=diffaug", "augment.networks=[critic]"), "augment.networks names 'critic', which is not a network"),
    (("augment=none", "augment.kind=fancy"), "augment.kind must be one of none, diffaug, ada"),
])
def test_bad_augment_settings_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate_config(compose_config(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    ((*RING8, "augment=diffaug"), "augment=diffaug transforms images, but data ring8 holds points"),
    (("augment=ada", "augment.ada.phase=G"), "augment.ada.phase is 'G', whose loss sees no real batch"),
])
def test_augmentation_that_cannot_apply_is_refused_at_build(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        build_components(compose_config(*overrides, "debug=default"))


def test_the_cli_glue_prints_a_bad_target_as_one_error_line_and_exits_2(tmp_path, capsys):
    overrides = ["augment=ada", "augment.ada.target=1.5"]
    with pytest.raises(SystemExit) as exit_:
        report_user_errors(train, compose_config(*overrides), tmp_path / "run", overrides)
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "error: augment.ada.target must be a number in [0, 1), got 1.5\n"
    assert not (tmp_path / "run").exists()  # refused before anything was written


# -- two processes (ALTTRAIN_SLOW_TESTS=1: two fresh interpreters cost more than the rest of this file) --


def _rank_main(rank, port, out):
    """One of two gloo ranks: a short augment=ada run; dumps this rank's augmentation, weights and one draw."""
    from alttrain.engine.trainer import Trainer
    from alttrain.scale import processes
    from alttrain.scale.distributed import replica_tensors

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    processes.setup()
    fit = Trainer.fit

    def recording_fit(self):
        state = fit(self)
        aug = self.transforms["discriminator"]
        record = {"augment": aug.state_dict(), "weights": dict(replica_tensors(self.networks)),
                  "draw": aug(torch.linspace(-1, 1, 32).expand(8, 1, 32, 32))}
        torch.save(record, out / f"rank{rank}.pt")
        return state

    Trainer.fit = recording_fit
    try:
        train(compose_config(*TINY, *ADA, "trainer.max_steps=4"), out / f"run{rank}")
    finally:
        processes.teardown()


@pytest.mark.skipif(os.environ.get("ALTTRAIN_SLOW_TESTS") != "1", reason="two processes: ALTTRAIN_SLOW_TESTS=1")
def test_two_ranks_agree_on_p_and_augment_their_batches_differently(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_main, args=(port, tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    a, b = (r["augment"] for r in ranks)
    assert a["calls"] == b["calls"] == 3 * 4 and torch.equal(a["p"], b["p"])  # 4 steps of D (2 calls) and G
    assert not torch.equal(a["p"], torch.tensor(0.25))  # p moved, by the same steps everywhere
    assert all(torch.equal(t, ranks[1]["weights"][k]) for k, t in ranks[0]["weights"].items())
    assert not torch.equal(ranks[0]["draw"], ranks[1]["draw"])  # each rank its own random stream
    saved = load_checkpoint(tmp_path / "run0" / "checkpoints" / "last.pt")["augment"]["discriminator"]
    assert torch.equal(saved["p"], a["p"]) and saved["calls"] == 3 * 4
