"""Decoded data read by DataLoader workers: the in-process batches bit for bit, exact resume, per-rank
shards, seeded random transforms, subsets, and failures that are one line instead of a hang."""

import contextlib
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch

from alttrain.data import LoaderStream, ShardedStream, dataset, digits, image_folder
from alttrain.data.plan import ShardPlan
from alttrain.errors import CheckpointError, ConfigError, DataError


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging: SIGALRM interrupts the blocking wait inside the body."""
    def expire(signum, frame):
        raise AssertionError(f"still waiting after {seconds} s: the stream hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def write_folder(root, count=24, classes=3, size=(20, 14)):
    """``count`` random RGB JPEGs and PNGs in ``classes`` class folders (odd sizes: resize and crop do work)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / f"class{i % classes}" / f"{i:03d}.{'jpg' if i % 2 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return root


def take(stream, k):
    return [next(stream) for _ in range(k)]


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert torch.equal(a.samples, b.samples)
        assert (a.labels is None) == (b.labels is None)
        if a.labels is not None:
            assert torch.equal(a.labels, b.labels)


class Indexed(torch.utils.data.Dataset):
    """Item i is a 1x1x1 image holding i, labelled i % 3, plus a random 'transform' from the global RNGs."""

    classes = ["0", "1", "2"]

    def __init__(self, size=40, noisy=False):
        self.size, self.noisy = size, noisy

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        value = float(i)
        if self.noisy:  # as torchvision's random transforms do: draws from torch's, NumPy's and Python's RNGs
            import random
            value += 0.01 * (float(torch.rand(())) + float(np.random.rand()) + random.random())
        return torch.tensor([[[value]]]), i % 3


class Failing(Indexed):
    def __init__(self, bad=5, delay=0.0):
        super().__init__(size=16)
        self.bad, self.delay = bad, delay

    def __getitem__(self, i):
        time.sleep(self.delay if i == self.bad else 0.0)
        if i == self.bad and not self.delay:
            raise ValueError(f"no item {i} today")
        return super().__getitem__(i)


def test_two_workers_serve_the_in_process_batches_bit_for_bit(tmp_path):
    root = write_folder(tmp_path / "images")
    rng_before = torch.get_rng_state()
    make = lambda workers: image_folder(root, batch_size=4, image_size=8, flip=True, num_workers=workers)
    inline, workers = make(0).stream(seed=5), make(2).stream(seed=5)
    assert type(inline) is ShardedStream and type(workers) is LoaderStream
    expected, got = take(inline, 15), take(workers, 15)  # 6 batches per epoch: three epochs, two boundaries
    assert_same_batches(expected, got)
    assert workers.state_dict() == inline.state_dict() == {**workers.state_dict(), "epoch": 2, "cursor": 3}
    workers.close()
    # The flips are real (an unflipped read differs) and the loader never drew from the global RNG.
    unflipped = take(image_folder(root, batch_size=4, image_size=8, num_workers=0).stream(seed=5), 15)
    assert not all(torch.equal(a.samples, b.samples) for a, b in zip(expected, unflipped))
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(expected, unflipped))
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_a_resumed_stream_with_workers_continues_exactly(tmp_path):
    root = write_folder(tmp_path / "images")
    source = image_folder(root, batch_size=4, image_size=8, flip=True, num_workers=2)
    straight = take(source.stream(seed=1), 16)
    first = source.stream(seed=1)
    take(first, 5)  # the workers have read further ahead than this: the state counts batches served
    path = tmp_path / "state.pt"
    torch.save(first.state_dict(), path)
    first.close()
    resumed = source.stream(seed=1)
    resumed.load_state_dict(torch.load(path, weights_only=True))
    assert_same_batches(straight[5:13], take(resumed, 8))
    resumed.close()
    # A state saved by an in-process stream resumes a worker stream (and back): num_workers may change.
    inline = image_folder(root, batch_size=4, image_size=8, flip=True, num_workers=0).stream(seed=1)
    inline.load_state_dict(resumed.state_dict())
    assert_same_batches(straight[13:], take(inline, 3))
    with pytest.raises(CheckpointError, match="seed"):
        source.stream(seed=2).load_state_dict(resumed.state_dict())


def test_each_rank_reads_its_own_shard_through_workers():
    source = dataset(Indexed(size=42), batch_size=4, num_workers=1)
    seen = []
    for rank in range(2):
        stream = source.stream(seed=3, rank=rank, world_size=2)
        batches = take(stream, 10)  # 42 // 2 = 21 per rank -> 5 batches per epoch: two epochs
        stream.close()
        plan = ShardPlan(42, 4, seed=3, rank=rank, world_size=2)
        expected = [plan.indices(e, c) for e in range(2) for c in range(5)]
        assert [b.samples.flatten().long().tolist() for b in batches] == [i.tolist() for i in expected]
        assert all(torch.equal(b.labels, i % 3) for b, i in zip(batches, expected))
        seen.append(set(torch.cat(expected[:5]).tolist()))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 40  # disjoint; 2 items dropped to even shards


def test_random_transforms_in_a_dataset_do_not_depend_on_the_workers():
    make = lambda workers: dataset(Indexed(size=12, noisy=True), batch_size=3, num_workers=workers)
    rng_before = torch.get_rng_state(), np.random.get_state()[1].copy()
    inline = take(make(0).stream(seed=4), 8)
    stream = make(2).stream(seed=4)
    assert_same_batches(inline, take(stream, 8))
    stream.close()
    # Seeded per (seed, epoch, item): an item's draw differs between epochs and between seeds.
    first = {int(v): v for v in torch.cat([b.samples.flatten() for b in inline[:4]])}
    again = {int(v): v for v in torch.cat([b.samples.flatten() for b in inline[4:]])}
    assert first.keys() == again.keys() and all(first[k] != again[k] for k in first)
    other = torch.cat([b.samples.flatten() for b in take(make(0).stream(seed=5), 4)])
    assert not torch.equal(torch.cat([b.samples.flatten() for b in inline[:4]]).sort().values, other.sort().values)
    # In the training process the data set's draws leave the run's own RNGs where they were.
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    assert np.array_equal(np.random.get_state()[1], rng_before[1])


def test_a_killed_worker_is_one_data_error_not_a_hang():
    before = set(multiprocessing.active_children())
    stream = dataset(Indexed(size=64), batch_size=2, num_workers=1).stream(seed=0)
    next(stream)
    (worker,) = set(multiprocessing.active_children()) - before
    os.kill(worker.pid, signal.SIGKILL)
    with deadline(60), pytest.raises(DataError) as info:
        take(stream, 10)  # a few were read ahead; then the next wait finds the worker gone
    message = str(info.value)
    assert f"pid {worker.pid} killed by SIGKILL" in message and "data.num_workers" in message and "\n" not in message
    assert not set(multiprocessing.active_children()) - before  # the loader was shut down


def test_a_process_that_leaves_a_worker_stream_open_still_exits(tmp_path):
    # Workers ignore SIGTERM (a run stops at a step boundary, then ends them); multiprocessing's exit
    # hook would terminate() them with one and then wait for them forever.
    import subprocess
    import sys

    from conftest import ROOT

    script = ("import torch\nfrom alttrain.data import dataset\n"
              "class Ones(torch.utils.data.Dataset):\n"
              "    def __len__(self): return 8\n"
              "    def __getitem__(self, i): return torch.ones(1, 2, 2)\n"
              "stream = dataset(Ones(), batch_size=2, num_workers=1).stream(seed=0)\n"
              "print(next(stream).samples.shape)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "torch.Size([2, 1, 2, 2])"


def test_an_error_in_a_worker_is_one_line_naming_the_item_and_the_line():
    stream = dataset(Failing(bad=5), batch_size=4, num_workers=1).stream(seed=0)
    with deadline(60), pytest.raises(DataError) as info:
        take(stream, 4)  # one epoch: item 5 is in one of these batches
    message = str(info.value)
    assert "Failing) item 5 failed (ValueError: no item 5 today at " in message and "test_pipeline.py:" in message
    assert "\n" not in message


def test_a_stuck_worker_is_a_timeout_error_and_is_ended(tmp_path):
    before = set(multiprocessing.active_children())
    stream = dataset(Failing(bad=3, delay=120), batch_size=16, num_workers=1, timeout=2).stream(seed=0)
    with deadline(60), pytest.raises(DataError, match=r"in 2 s \(data.timeout\)"):
        next(stream)
    assert not set(multiprocessing.active_children()) - before  # killed: it would not have heard a SIGTERM


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_a_subset_keeps_that_share_of_every_class_chosen_by_the_seed(fraction):
    source = digits(batch_size=8, image_size=8, subset=fraction)
    items = source.subset_items(seed=0)
    counts, kept = torch.bincount(source.labels, minlength=10), torch.bincount(source.labels[items], minlength=10)
    assert kept.tolist() == [int(np.floor(fraction * n + 0.5)) for n in counts.tolist()]  # 10% of 178 -> 18, ...
    assert torch.equal(items, source.subset_items(seed=0)) and not torch.equal(items, source.subset_items(seed=1))
    stream = source.stream(seed=0)
    served = torch.cat([next(stream).labels for _ in range(stream.batches_per_epoch)])
    assert stream.batches_per_epoch == len(items) // 8 and len(served) == 8 * (len(items) // 8)
    # The metric reference set is the full data set, whatever the subset.
    assert torch.equal(source.reference(300), digits(image_size=8).reference(300))


def test_a_subset_resumes_exactly_and_refuses_another_fraction(tmp_path):
    root = write_folder(tmp_path / "images", count=30)
    source = image_folder(root, batch_size=2, image_size=8, subset=0.5, num_workers=1)
    straight = take(source.stream(seed=2), 12)  # 15 items kept -> 7 batches per epoch
    first = source.stream(seed=2)
    take(first, 4)
    state = first.state_dict()
    assert state["subset"] == 0.5 and state["size"] == 30
    resumed = source.stream(seed=2)
    resumed.load_state_dict(state)
    assert_same_batches(straight[4:], take(resumed, 8))
    for stream in (first, resumed):
        stream.close()
    with pytest.raises(CheckpointError, match="subset"):
        image_folder(root, batch_size=2, image_size=8, subset=0.6, num_workers=0).stream(seed=2).load_state_dict(state)
    # A state written before data.subset existed (no such key) still loads into a full-set stream.
    full = digits(batch_size=8, image_size=8).stream(seed=0)
    full.load_state_dict({**full.state_dict(), "cursor": 3})
    with pytest.raises(ConfigError, match=r"data.subset=0.01 keeps 20 of 1797"):
        digits(batch_size=32, image_size=8, subset=0.01).stream(seed=0)


@pytest.mark.parametrize("kwargs, key", [({"subset": 0.0}, "data.subset"), ({"subset": 1.5}, "data.subset"),
                                         ({"num_workers": -1}, "data.num_workers"),
                                         ({"num_workers": True}, "data.num_workers"),
                                         ({"timeout": -1}, "data.timeout"), ({"prefetch": 0}, "data.prefetch"),
                                         ({"verify": "yes"}, "data.verify"), ({"flip": 1}, "data.flip")])
def test_bad_pipeline_settings_name_their_key(tmp_path, kwargs, key):
    root = write_folder(tmp_path / "images", count=2)
    with pytest.raises(ConfigError, match=key):
        image_folder(root, **kwargs)


USER_DATASET = '''
import numpy as np
import torch


class Blobs(torch.utils.data.Dataset):
    """count uint8 RGB images (NumPy arrays, mapped 0..255 -> [-1, 1] by alttrain), dark or light."""

    classes = ["dark", "light"]

    def __init__(self, count=32, size=16):
        self.count, self.size = count, size

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        pixels = np.random.default_rng(i).integers(0, 128, (3, self.size, self.size))
        if torch.rand(()) < 0.5:  # a random flip, as a torchvision transform would draw it
            pixels = pixels[:, :, ::-1]
        return (pixels + 127 * (i % 2)).astype(np.uint8), i % 2
'''


def test_a_user_dataset_by_target_trains_through_train_py_and_logs_data_wait(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, SCRIPTS, env_with_pythonpath
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from alttrain.persist.checkpoint import load_checkpoint

    (tmp_path / "my_data.py").write_text(USER_DATASET)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "data=dataset",
                           "data.dataset._target_=my_data.Blobs",
                           "+data.dataset.count=32", "data.batch_size=8", "data.num_workers=1", "model.base_width=4",
                           "trainer.max_steps=6", "trainer.log_every=2", "trainer.sample_every=6",
                           "trainer.checkpoint_every=6", "trainer.progress=never", f"hydra.run.dir={out}"],
                          cwd=ROOT, capture_output=True, text=True, env=env_with_pythonpath(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["data"]["epoch"] == 1 and ckpt["data"]["cursor"] == 2  # 6 D batches, 4 per epoch
    acc = EventAccumulator(str(out), size_guidance={"scalars": 0})
    acc.Reload()
    waits = acc.Scalars("time/data_wait")
    assert [e.step for e in waits] == [0, 2, 4]
    assert all(0 <= e.value <= 1 for e in waits)
    assert waits[0].value > 0  # the first step waits for the worker to start and read the first batch


def test_the_pipeline_benchmark_runs_on_a_tiny_folder(tmp_path, capsys):
    """Timings are never asserted: only that every measurement of the data workload runs and is reported."""
    import importlib.util

    from conftest import SCRIPTS

    spec = importlib.util.spec_from_file_location("bench_script", SCRIPTS / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--workloads", "data", "--device", "cpu", "--rounds", "1", "--data-images", "6", "--data-sizes", "16",
                "--data-workers", "1", "--data-batches", "2", "--data-warmup", "1", "--data-steps", "3",
                "--data-batch-size", "2", "--data-dir", str(tmp_path)])
    report = capsys.readouterr().out
    assert len(list((tmp_path / "jpeg16" / "all").glob("*.jpg"))) == 6
    row = next(line for line in report.splitlines() if line.startswith("| 16 |") and "x |" in line)
    assert float(row.split("|")[5]) < 1e-5  # the two pipelines computed the same tensors
    waits = [line for line in report.splitlines() if line.startswith("| 16 | ") and line.count("|") == 4]
    assert [line.split("|")[2].strip() for line in waits] == ["0", "1"]
    assert all(0 <= float(line.split("|")[3]) <= 1 for line in waits)
