"""Metrics: 2-D mode coverage, the shipped digits classifier, FID/KID/class coverage of digits."""

from __future__ import annotations

import math
import runpy
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from alttrain.errors import CheckpointError, ConfigError
from alttrain.metrics import ImageMetrics, load_digits_classifier, mode_metrics
from alttrain.metrics.classifier import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent.parent
RING_STD, GRID_STD = 0.01, 0.05


pytestmark = pytest.mark.usefixtures("one_thread")


def ring_centers() -> torch.Tensor:
    angles = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
    return torch.stack([angles.cos(), angles.sin()], dim=1)


def grid_centers() -> torch.Tensor:
    axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("centers", [ring_centers(), grid_centers()])
def test_samples_on_the_centers_capture_every_mode_at_full_quality(centers):
    out = mode_metrics(centers.repeat(3, 1), centers, std=0.01)
    assert out == {"modes": len(centers), "high_quality": 100.0, "reverse_kl": 0.0, "mode_score": 100.0}


@pytest.mark.parametrize("centers, std", [(ring_centers(), RING_STD), (grid_centers(), GRID_STD)])
def test_true_mixture_scores_the_98_89_percent_ceiling(centers, std):
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(centers), (n,), generator=gen)
    samples = centers[idx] + std * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    out = mode_metrics(samples, centers, std)
    # In 2-D the radius of an isotropic Gaussian is Rayleigh: P(r <= 3 sd) = 1 - exp(-9/2).
    p = 1 - math.exp(-4.5)
    # Binomial standard error of the percentage is 0.023 points at this n; allow 5 of them.
    tolerance = 5 * 100 * math.sqrt(p * (1 - p) / n)
    assert abs(out["high_quality"] - 100 * p) < tolerance
    assert out["modes"] == len(centers)
    # A multinomial draw of n over K equal modes has E[KL] ~ (K-1)/(2n) ~ 6e-5 for the grid.
    assert 0 < out["reverse_kl"] < 1e-3


@pytest.mark.parametrize("centers", [ring_centers(), grid_centers()])
def test_collapse_onto_one_mode_gives_one_mode_and_kl_log_k(centers):
    samples = centers[3].repeat(2500, 1) + 1e-4
    out = mode_metrics(samples, centers, std=0.01)
    assert out["modes"] == 1
    assert out["high_quality"] == 100.0
    assert out["reverse_kl"] == math.log(len(centers))


def test_far_away_samples_capture_nothing_and_kl_is_inf():
    samples = torch.full((100, 2), 50.0)
    out = mode_metrics(samples, ring_centers(), RING_STD)
    assert out == {"modes": 0, "high_quality": 0.0, "reverse_kl": math.inf, "mode_score": 0.0}


def test_reverse_kl_of_a_hand_built_histogram():
    centers = ring_centers()
    # q = (1/2, 1/4, 1/4) on three of eight modes: KL = 1/2 ln 4 + 2 * 1/4 ln 2 = 1.5 ln 2.
    samples = centers[[0, 0, 1, 2]]
    out = mode_metrics(samples, centers, RING_STD)
    assert out["modes"] == 3
    assert out["reverse_kl"] == pytest.approx(1.5 * math.log(2), abs=1e-15)


def test_high_quality_boundary_is_three_std_and_only_hq_samples_capture():
    centers = ring_centers()
    # Mode 0 sits at (1, 0); step outward along x so the distance is exactly the offset.
    inside = torch.tensor([[1 + 2.999 * RING_STD, 0.0]])
    outside = torch.tensor([[1 + 3.001 * RING_STD, 0.0]])
    assert mode_metrics(inside, centers, RING_STD)["modes"] == 1
    out = mode_metrics(torch.cat([outside, centers[[5]]]), centers, RING_STD)
    assert out["high_quality"] == 50.0
    assert out["modes"] == 1  # mode 0 is the nearest of a low-quality sample only: not captured
    assert out["reverse_kl"] == math.log(8)


@pytest.mark.parametrize(
    "samples, centers, std",
    [
        (torch.zeros(4, 2), ring_centers(), 0.0),  # std must be > 0
        (torch.zeros(4, 3), ring_centers(), 0.1),  # 3-D samples, 2-D centers
        (torch.zeros(0, 2), ring_centers(), 0.1),  # no samples
    ],
)
def test_mode_metrics_reject_bad_inputs(samples, centers, std):
    with pytest.raises(ConfigError):
        mode_metrics(samples, centers, std)


# ---------------------------------------------------------------- classifier


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(ROOT / "scripts" / "train_digits_classifier.py"))


@pytest.fixture(scope="module")
def split(script):
    return script["load_split"]()


@pytest.fixture(scope="module")
def net():
    return load_digits_classifier()




def test_shipped_classifier_is_frozen_small_and_as_accurate_as_recorded(net, script, split):
    assert DEFAULT_WEIGHTS.stat().st_size < 1_000_000
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    _, _, x_test, y_test = split
    measured = script["accuracy"](net, x_test, y_test)
    assert measured == net.meta["test_accuracy"]
    assert measured >= 0.97


def test_classifier_resizes_any_input_like_the_data_pipeline(net, split):
    x = split[0][:16]
    small = F.interpolate(x, size=net.input_size, mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(net.features(x), net.features(small))
    odd = F.interpolate(x, size=(28, 20), mode="bilinear", antialias=True, align_corners=False)
    assert net.features(odd).shape == (16, net.num_features)
    assert net(odd).shape == (16, 10)
    with pytest.raises(ConfigError, match="1-channel"):
        net(x.repeat(1, 3, 1, 1))


def test_training_is_bit_reproducible(script):
    a, acc_a = script["train_classifier"](seed=3, epochs=1)
    b, acc_b = script["train_classifier"](seed=3, epochs=1)
    assert acc_a == acc_b
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _flip_byte_in_largest_member(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.compress_size)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)  # local header: name and extra-field lengths at byte 26
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        f.seek(info.header_offset + 30 + name_len + extra_len + info.compress_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_corrupted_or_missing_weights_raise_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_digits_classifier(tmp_path / "absent.pt")
    bad = tmp_path / "digits_classifier.pt"
    shutil.copy(DEFAULT_WEIGHTS, bad)
    _flip_byte_in_largest_member(bad)
    with pytest.raises(CheckpointError, match="CRC"):
        load_digits_classifier(bad)


# ---------------------------------------------------------------- image metrics


@pytest.fixture(scope="module")
def metrics(split, net):
    x_train, y_train, _, _ = split
    return ImageMetrics(x_train, net, labels=y_train, kid_subset_size=300, kid_subsets=10)


def noise_like(x: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_fid_of_the_real_set_against_itself_is_zero(metrics, split):
    out = metrics.compute(split[0])
    assert abs(out["fid"]) < 1e-3
    assert out["classes_covered"] == 10
    # Precision/recall/density/coverage in the classifier's feature space: the set against itself.
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert out["density"] == pytest.approx(1.0, abs=0.01)


def test_fid_and_kid_grow_as_real_images_are_replaced_by_noise(metrics, split):
    x_test = split[2]
    scores = []
    for replaced in (0, 90, 180, 360):  # of the 360 held-out images
        fake = torch.cat([x_test[replaced:], noise_like(x_test[:replaced], replaced)])
        scores.append(metrics.compute(fake))
    fids = [s["fid"] for s in scores]
    kids = [s["kid"] for s in scores]
    assert fids == sorted(fids) and len(set(fids)) == 4
    assert kids == sorted(kids) and len(set(kids)) == 4
    # Held-out real digits sit far closer to the real set than noise does.
    assert fids[0] < fids[-1] / 10


def test_class_entropy_is_zero_for_one_repeated_digit(metrics, split):
    out = metrics.compute(split[2][:1].repeat(50, 1, 1, 1))
    assert out["class_entropy"] == 0.0
    assert out["classes_covered"] == 1


@pytest.fixture(scope="module")
def pick(net, split):
    """``pick(label, count)``: the first ``count`` training images of ``label`` that ``net`` gets right."""
    x, y = split[0], split[1]
    with torch.no_grad():
        right = net(x).argmax(dim=1) == y
    return lambda label, count: x[right & (y == label)][:count]


def test_class_entropy_of_a_balanced_set_is_ln_10(metrics, pick):
    balanced = torch.cat([pick(k, 40) for k in range(10)])
    assert len(balanced) == 400
    out = metrics.compute(balanced)
    assert out["class_entropy"] == pytest.approx(math.log(10), abs=1e-12)
    assert out["classes_covered"] == 10


@pytest.mark.parametrize("sevens, covered", [(99, 2), (199, 1)])
def test_a_class_is_covered_from_one_percent_of_samples(metrics, pick, sevens, covered):
    # One three among 99 sevens is exactly 1% of the samples (covered); among 199, 0.5% (not).
    fake = torch.cat([pick(7, 1).repeat(sevens, 1, 1, 1), pick(3, 1)])
    out = metrics.compute(fake)
    assert out["classes_covered"] == covered
    p = 1 / len(fake)
    assert out["class_entropy"] == pytest.approx(p * math.log(1 / p) + (1 - p) * math.log(1 / (1 - p)), abs=1e-12)


def test_compute_is_repeatable_and_leaves_the_global_rng_alone(metrics, split):
    fake = split[2]
    state = torch.get_rng_state()
    first = metrics.compute(fake)
    assert torch.equal(torch.get_rng_state(), state)
    assert metrics.compute(fake) == first


def test_real_features_are_computed_once(split):
    net = load_digits_classifier()
    seen = []
    original = net.features
    net.features = lambda x: (seen.append(len(x)), original(x))[1]
    x_train, _, x_test, _ = split
    m = ImageMetrics(x_train, net, kid_subset_size=100, kid_subsets=2, batch_size=1000)
    m.compute(x_test)
    m.compute(x_test)
    assert seen == [1000, len(x_train) - 1000, len(x_test), len(x_test)]
    assert m.real_accuracy is None


def test_real_accuracy_and_shape_errors(metrics, split):
    assert metrics.real_accuracy == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ConfigError, match="resolution"):
        metrics.compute(split[2][:, :, :16, :16])
    with pytest.raises(ConfigError, match="at least 2"):
        metrics.compute(split[2][:1])


def test_a_2d_run_never_imports_torchmetrics():
    # torchmetrics takes seconds to import; only image metrics need it, so 2-D runs start faster.
    import subprocess
    import sys

    code = ("import sys; import alttrain.run.app, alttrain.metrics.evaluate; from alttrain.metrics import mode_metrics; "
            "assert 'torchmetrics' not in sys.modules and 'torch_fidelity' not in sys.modules, 'imported'; "
            "from alttrain.metrics import ImageMetrics; assert 'torchmetrics' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- which data gets which metrics


def test_a_2d_mixture_gets_mode_metrics_and_prdc_on_the_raw_points():
    from alttrain.data import ring8
    from alttrain.metrics.evaluate import Evaluator

    data = ring8()
    evaluator = Evaluator(data, None, None, num_samples=300)
    out = evaluator.score(data.reference(300))  # the real points themselves
    assert out["modes"] == 8 and out["precision"] == out["recall"] == out["coverage"] == 1.0
    assert 1.0 <= out["density"] <= 1.0 + 1 / 5  # exactly 1 up to boundary ties (at most one per real ball)
    assert evaluator.info == {"features": {"points": {
        "extractor": "none: the raw coordinates", "resize": "none", "num_real": 300, "num_fake": 300,
        "k": {"precision_recall": 3, "density_coverage": 5}}}}


def test_digits_record_the_shipped_classifier_and_its_weights_hash():
    import hashlib

    from alttrain.data import digits
    from alttrain.metrics.evaluate import Evaluator

    evaluator = Evaluator(digits(), None, None, num_samples=64)
    record = evaluator.info["features"]["digits_classifier"]
    assert record["weights_sha256"] == hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    assert (record["num_real"], record["num_fake"], record["resize"]) == (64, 64, "bilinear, antialiased, to 16x16")
    assert "note" not in evaluator.info  # digits are scored by the classifier: no Inception note
