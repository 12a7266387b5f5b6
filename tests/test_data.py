"""Data sources: mixture geometry, image scaling, exact resume, rank sharding, readable errors."""

import math
import re
import struct

import numpy as np
import pytest
import torch

from alttrain.data import (
    IndexedSource,
    cifar10,
    digits,
    grid25,
    image_folder,
    mnist,
    ring8,
)
from alttrain.errors import CheckpointError, ConfigError, DataError


def take(stream, k):
    """The samples of the next ``k`` batches."""
    return [b.samples for b in take_batches(stream, k)]


def take_batches(stream, k):
    return [next(stream) for _ in range(k)]


def save_and_reload(state, tmp_path):
    """Round-trip a state through a file the way a checkpoint does, under the safe loader."""
    path = tmp_path / "stream.pt"
    torch.save(state, path)
    return torch.load(path, weights_only=True)


def assert_resumes_exactly(source, tmp_path, before, after, rank=0, world_size=1):
    reference = take_batches(source.stream(seed=7, rank=rank, world_size=world_size), before + after)
    first = source.stream(seed=7, rank=rank, world_size=world_size)
    take(first, before)
    state = save_and_reload(first.state_dict(), tmp_path)
    resumed = source.stream(seed=7, rank=rank, world_size=world_size)
    resumed.load_state_dict(state)
    for expected, got in zip(reference[before:], take_batches(resumed, after)):
        assert torch.equal(expected.samples, got.samples)
        assert (expected.labels is None) == (got.labels is None)
        if expected.labels is not None:  # labelled streams resume their labels exactly too
            assert torch.equal(expected.labels, got.labels)


def index_source(size, batch_size):
    """A finite source whose samples are their own item indices, to watch the shuffling."""
    return IndexedSource(name="ids", kind="points", sample_shape=(1,), batch_size=batch_size,
                         size=size, fetch=lambda idx: idx.float()[:, None])


def write_png(path, size, color, mode="RGB"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


# ---- 2-D mixtures ---------------------------------------------------------------------------

def test_ring8_has_eight_distinct_centers_at_angles_2pi_k_over_8():
    centers = ring8().centers
    assert centers.shape == (8, 2)
    assert torch.equal(centers[0], torch.tensor([1.0, 0.0]))
    h = math.sqrt(0.5)
    hand = torch.tensor([[1, 0], [h, h], [0, 1], [-h, h], [-1, 0], [-h, -h], [0, -1], [h, -h]])
    assert (centers - hand).abs().max() <= 1e-7  # cos(pi/2) is 6e-17 in float64, not 0
    # Distinct: neighbours are 2 sin(pi/8) apart, so no two centers coincide.
    gaps = torch.cdist(centers, centers) + 10 * torch.eye(8)
    assert gaps.min().item() == pytest.approx(2 * math.sin(math.pi / 8), abs=1e-6)


def test_ring_radius_and_mode_count_are_honoured():
    centers = ring8(num_modes=4, radius=2.0).centers
    hand = torch.tensor([[2.0, 0], [0, 2], [-2, 0], [0, -2]])
    assert (centers - hand).abs().max() <= 1e-6


def test_grid25_centers_are_the_5x5_lattice_of_even_coordinates():
    centers = grid25().centers
    got = sorted(tuple(c) for c in centers.tolist())
    expected = sorted((float(x), float(y)) for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4))
    assert got == expected


@pytest.mark.parametrize("factory", [ring8, grid25])
def test_mixture_samples_lie_near_centers_with_the_given_spread(factory):
    source = factory(batch_size=500)
    x = torch.cat(take(source.stream(seed=3), 4))
    assert x.shape == (2000, 2) and x.dtype == torch.float32
    nearest = torch.cdist(x, source.centers).argmin(dim=1)
    residual = x - source.centers[nearest]
    assert residual.norm(dim=1).max() < 6 * source.std
    assert set(nearest.tolist()) == set(range(len(source.centers)))  # every mode is hit
    assert residual.std().item() == pytest.approx(source.std, rel=0.05)


def test_mixture_reference_is_deterministic_and_balanced():
    source = ring8(batch_size=4)
    a, b = source.reference(800), source.reference(800)
    assert torch.equal(a, b)
    nearest = torch.cdist(a, source.centers).argmin(dim=1)
    assert torch.bincount(nearest).tolist() == [100] * 8


@pytest.mark.parametrize("kwargs", [{"batch_size": 0}, {"num_modes": 0}, {"std": 0.0},
                                    {"radius": -1.0}, {"batch_size": True}, {"std": "x"}])
def test_ring8_rejects_bad_arguments(kwargs):
    with pytest.raises(ConfigError):
        ring8(**kwargs)


def test_toy_resume_is_exact(tmp_path):
    assert_resumes_exactly(ring8(batch_size=16), tmp_path, before=5, after=6)
    assert_resumes_exactly(grid25(batch_size=16), tmp_path, before=3, after=4, rank=1,
                           world_size=2)


def test_toy_ranks_and_seeds_give_different_batches():
    source = ring8(batch_size=8)
    a = next(source.stream(seed=0, rank=0, world_size=2)).samples
    b = next(source.stream(seed=0, rank=1, world_size=2)).samples
    c = next(source.stream(seed=1, rank=0, world_size=2)).samples
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_streams_leave_the_global_rng_alone():
    before = torch.get_rng_state()
    take(ring8().stream(seed=0), 2)
    take(digits(image_size=8).stream(seed=0), 2)
    ring8().reference(10)
    assert torch.equal(torch.get_rng_state(), before)
    # ...and do not read it either: batches are the same whatever the global seed.
    torch.manual_seed(1)
    a = next(ring8().stream(seed=0)).samples
    torch.manual_seed(2)
    assert torch.equal(a, next(ring8().stream(seed=0)).samples)


# ---- finite sets: shuffling, sharding, resume -------------------------------------------------

def test_ranks_get_disjoint_shards_that_cover_each_epoch():
    source = index_source(size=100, batch_size=5)  # 4 ranks x 5 batches x 5 items
    epochs = []
    for epoch in range(2):
        seen = []
        for rank in range(4):
            stream = source.stream(seed=11, rank=rank, world_size=4)
            batches = take(stream, 10)[epoch * 5:(epoch + 1) * 5]
            seen.append(set(torch.cat(batches).flatten().long().tolist()))
        assert all(len(s) == 25 for s in seen)
        assert set.union(*seen) == set(range(100))  # disjoint (4 x 25 = 100) and covering
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_uneven_sizes_drop_to_equal_shards_and_whole_batches():
    source = index_source(size=103, batch_size=4)  # 103 // 3 = 34 per rank -> 8 batches
    stream = source.stream(seed=0, rank=2, world_size=3)
    assert stream.batches_per_epoch == 8
    first_epoch = torch.cat(take(stream, 8)).flatten()
    assert len(set(first_epoch.tolist())) == 32
    epoch_two = next(stream).samples
    assert stream.state_dict()["epoch"] == 1 and stream.state_dict()["cursor"] == 1
    assert epoch_two.shape == (4, 1)


def test_batch_larger_than_a_shard_is_a_config_error():
    with pytest.raises(ConfigError, match="batch_size"):
        index_source(size=10, batch_size=4).stream(seed=0, world_size=3)


def test_digits_resume_is_exact_across_an_epoch_boundary(tmp_path):
    source = digits(batch_size=64, image_size=8)  # 1797 // 64 = 28 batches per epoch
    assert_resumes_exactly(source, tmp_path, before=26, after=5)
    assert_resumes_exactly(source, tmp_path, before=3, after=2, rank=1, world_size=2)


def test_state_from_other_settings_is_refused():
    source = index_source(size=20, batch_size=2)
    state = source.stream(seed=1).state_dict()
    with pytest.raises(CheckpointError, match="seed"):
        source.stream(seed=2).load_state_dict(state)
    with pytest.raises(CheckpointError, match="world_size"):
        source.stream(seed=1, rank=0, world_size=2).load_state_dict(state)


# ---- image sets -----------------------------------------------------------------------------

def test_digits_are_sklearn_digits_scaled_to_minus_one_one():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    source = digits(image_size=8)
    everything = source.fetch(torch.arange(source.size))
    expected = torch.from_numpy(bunch.images).float()[:, None] / 8 - 1
    assert torch.equal(everything, expected)
    assert torch.equal(source.labels, torch.from_numpy(bunch.target).long())
    assert source.num_classes == 10 and source.kind == "images"


def test_digits_batches_have_the_requested_shape_and_range():
    source = digits(batch_size=16, image_size=32)
    assert source.sample_shape == (1, 32, 32) and source.size == 1797
    batch = next(source.stream(seed=0)).samples
    assert batch.shape == (16, 1, 32, 32) and batch.dtype == torch.float32
    assert batch.min() >= -1 and batch.max() <= 1
    assert batch.min() == -1  # background corners stay exactly at the bottom of the range


def test_reference_is_deterministic_and_labelled_consistently():
    source = digits(image_size=8)
    ref, labels = source.reference(50), source.reference_labels(50)
    assert torch.equal(ref, digits(image_size=8).reference(50))
    assert torch.equal(ref[:20], source.reference(20))  # a prefix, whatever n is asked
    # Each reference image carries the label of an identical image in the data set.
    everything = source.fetch(torch.arange(source.size)).flatten(1)
    same = (ref.flatten(1)[:, None] == everything[None]).all(dim=2)  # (50, 1797)
    assert (same & (labels[:, None] == source.labels[None])).any(dim=1).all()
    with pytest.raises(ConfigError, match="1797"):
        source.reference(2000)


def write_idx(path, magic, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_local_idx_files(tmp_path):
    images = np.arange(4 * 28 * 28).reshape(4, 28, 28) % 256
    for split in ("train", "t10k"):  # magic 0x08nn: uint8 items with nn dimensions
        write_idx(tmp_path / f"MNIST/raw/{split}-images-idx3-ubyte", 0x0803, images)
        write_idx(tmp_path / f"MNIST/raw/{split}-labels-idx1-ubyte", 0x0801, np.array([3, 1, 4, 1]))
    source = mnist(tmp_path, batch_size=2, image_size=28)
    assert source.size == 4 and source.labels.tolist() == [3, 1, 4, 1]
    expected = torch.from_numpy(images).float()[:, None] / 127.5 - 1
    assert torch.equal(source.fetch(torch.arange(4)), expected)
    batch = next(mnist(tmp_path, batch_size=2, image_size=32).stream(seed=0)).samples
    assert batch.shape == (2, 1, 32, 32) and batch.min() >= -1 and batch.max() <= 1


@pytest.mark.parametrize("factory, expected", [(mnist, "MNIST/raw"),
                                               (cifar10, "cifar-10-batches-py")])
def test_missing_torchvision_data_names_the_path_and_the_fix(factory, expected, tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError, match="data.download=true") as info:
        factory(root)
    message = str(info.value)
    assert str(root) in message and expected in message and "\n" not in message


def test_image_folder_missing_or_empty_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent"))):
        image_folder(tmp_path / "absent")
    with pytest.raises(DataError, match="no class subfolders"):
        image_folder(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match="no images"):
        image_folder(tmp_path)


def test_image_folder_resizes_crops_and_scales(tmp_path):
    write_png(tmp_path / "a/0.png", (40, 30), (255, 0, 51))
    write_png(tmp_path / "a/1.png", (30, 50), (0, 255, 255))
    write_png(tmp_path / "b/2.png", (16, 16), 128, mode="L")
    source = image_folder(tmp_path, batch_size=3, image_size=16)
    assert source.size == 3 and source.sample_shape == (3, 16, 16)
    first = source.fetch(torch.tensor([0]))[0]
    # Solid colours survive resizing exactly: (255, 0, 51) -> (1, -1, 51 / 127.5 - 1).
    for channel, value in enumerate([1.0, -1.0, 51 / 127.5 - 1]):
        assert torch.equal(first[channel], torch.full((16, 16), value))
    assert next(source.stream(seed=0)).samples.shape == (3, 3, 16, 16)
    gray = image_folder(tmp_path, batch_size=2, image_size=8, channels=1)
    assert next(gray.stream(seed=0)).samples.shape == (2, 1, 8, 8)


def test_image_folder_resume_is_exact(tmp_path):
    for i in range(5):
        write_png(tmp_path / f"images/x/{i}.png", (12, 12), (40 * i, 10, 200))
    source = image_folder(tmp_path / "images", batch_size=2, image_size=4)
    assert_resumes_exactly(source, tmp_path, before=3, after=3)


def test_image_folder_unreadable_file_names_it(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x/broken.png").write_bytes(b"not a png")
    source = image_folder(tmp_path, batch_size=1, image_size=4)
    with pytest.raises(DataError, match="broken.png"):
        next(source.stream(seed=0)).samples
