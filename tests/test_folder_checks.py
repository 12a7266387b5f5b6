"""Image folders fail at the start, not hours in: torchvision's scan order without its symlink loops,
every header checked before training (data.verify), and unreadable files named with the fix."""

import os

import numpy as np
import pytest
from conftest import compose_config
from PIL import Image
from test_pipeline import deadline, write_folder

from alttrain.data import image_folder, scan
from alttrain.data.scan import scan_folder
from alttrain.errors import DataError
from alttrain.run.app import train


def test_the_scan_lists_what_torchvision_lists_in_its_order(tmp_path):
    from torchvision.datasets import ImageFolder

    root = write_folder(tmp_path / "images", count=9)
    (root / "class0" / "deeper" / "deepest").mkdir(parents=True)
    for name in ("deeper/b.PNG", "deeper/a.jpeg", "deeper/deepest/z.png", "notes.txt"):
        Image.new("RGB", (5, 5)).save(root / "class0" / name, format="PNG")
    outside = write_folder(tmp_path / "elsewhere", count=2, classes=1) / "class0"
    os.symlink(outside, root / "class1" / "linked")  # a directory symlink that is no loop: followed
    os.symlink(root / "class2" / "002.png", root / "class2" / "alias.png")  # a file symlink: listed
    (root / "empty_class").mkdir()
    classes, paths, labels = scan_folder(str(root))
    folder = ImageFolder(str(root), allow_empty=True)
    assert classes == folder.classes == ["class0", "class1", "class2", "empty_class"]
    assert list(zip(paths, labels)) == folder.samples
    assert len(paths) == 9 + 3 + 2 + 1


@pytest.mark.parametrize("loops", [1, 2])
def test_directory_symlink_loops_are_entered_once(tmp_path, loops):
    # torchvision's os.walk(followlinks=True) lists one loop's 6 images 41 times, and never ends with two.
    root = write_folder(tmp_path / "images", count=6, classes=1)
    for i in range(loops):
        os.symlink(root / "class0", root / "class0" / f"loop{i}")
    os.symlink(root, root / "class0" / "up")  # back to the root: class0 must not be listed twice
    with deadline(30):
        source = image_folder(root, batch_size=2, image_size=8, num_workers=0)
    assert source.size == 6 and source.num_classes == 1
    assert sorted(os.path.basename(source.reader.paths[i]) for i in range(6)) == [f"{i:03d}.{'jpg' if i % 2 else 'png'}"
                                                                                  for i in range(6)]


def corrupt_mid_set(root):
    """A set of 12 with item 6 (in scan order) replaced by bytes that are no image."""
    write_folder(root, count=12, classes=2)
    bad = root / "class0" / "006.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but the rest is not")
    return bad


@pytest.mark.parametrize("verify", ["auto", True])
def test_a_corrupt_image_with_verify_on_stops_the_run_before_anything_is_written(tmp_path, verify):
    bad = corrupt_mid_set(tmp_path / "images")
    with pytest.raises(DataError) as info:
        image_folder(tmp_path / "images", batch_size=2, image_size=8, verify=verify).stream(seed=0)
    message = str(info.value)
    assert message.startswith(f"unreadable image {bad} (") and "among the 12 under" in message
    assert "replace it with a readable image" in message and "\n" not in message
    # Through the run's own entry: the error comes before any file is written.
    run_dir = tmp_path / "run"
    cfg = compose_config("data=image_folder", f"data.root={tmp_path / 'images'}", "data.image_size=16",
                         "data.batch_size=2", f"data.verify={str(verify).lower()}", "trainer.max_steps=2",
                         "trainer.progress=never")
    with pytest.raises(DataError, match="006.png"):
        train(cfg, run_dir)
    assert not run_dir.exists() or not any(run_dir.iterdir())


@pytest.mark.parametrize("workers", [0, 1])
def test_with_verify_off_the_image_is_named_when_it_is_reached(tmp_path, workers):
    bad = corrupt_mid_set(tmp_path / "images")
    stream = image_folder(tmp_path / "images", batch_size=2, image_size=8, verify=False,
                          num_workers=workers).stream(seed=0)
    with deadline(60), pytest.raises(DataError) as info:
        for _ in range(stream.batches_per_epoch):
            next(stream)
    message = str(info.value)
    assert message.startswith(f"cannot read image {bad} (UnidentifiedImageError: ")
    assert "replace it with a readable image (removing files changes the data set's size" in message
    assert "\n" not in message
    stream.close()


def test_a_truncated_jpeg_passes_the_header_check_and_is_named_at_read_time(tmp_path):
    root = write_folder(tmp_path / "images", count=4, classes=1, size=(64, 64))
    bad = root / "class0" / "001.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) // 2])  # the header (~600 bytes of tables) survives, half the pixels do not
    assert scan.header_error(str(bad)) is None
    source = image_folder(root, batch_size=4, image_size=8, num_workers=0)  # verify=auto passes
    with pytest.raises(DataError, match=f"cannot read image {bad} .*replace it"):
        next(source.stream(seed=0))


def test_verify_auto_skips_sets_above_its_limit(tmp_path, monkeypatch):
    corrupt_mid_set(tmp_path / "images")
    monkeypatch.setattr(scan, "VERIFY_AUTO_LIMIT", 11)
    stream = image_folder(tmp_path / "images", batch_size=2, image_size=8, num_workers=0).stream(seed=0)
    assert next(stream).samples.shape == (2, 3, 8, 8)  # not checked; the bad file is found when reached
    with pytest.raises(DataError, match="006.png"):
        image_folder(tmp_path / "images", batch_size=2, image_size=8, verify=True).stream(seed=0)


def test_paths_are_packed_and_read_back_exactly(tmp_path):
    paths = [str(tmp_path / name) for name in ("a.png", "ü/b.jpg", "", "c d.png")]
    table = scan.PathTable(paths)
    assert len(table) == 4 and [table[i] for i in range(4)] == paths
    assert isinstance(table._blob, np.ndarray) and table._blob.dtype == np.uint8
