"""Inception-v3 FID/KID/IS and precision/recall from a local weights file, and the evaluate command.

The published FID weights are not available offline, so every test runs the same code path on
randomly initialised weights of the same architecture, written to a temp file, with the hash check
pointed at that file. Inception costs about 0.5 s per image per core on the CPU: few images here.
"""

from __future__ import annotations

import hashlib
import json
import math
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from conftest import SCRIPTS, compose_config, env_with_pythonpath
from PIL import Image

from alttrain.errors import ConfigError
from alttrain.metrics.inception import (
    EXTRACTOR,
    PUBLISHED_SHA256,
    RESIZE,
    WEIGHTS_URL,
    InceptionMetrics,
    load_inception,
    to_uint8_rgb,
)
from alttrain.run.app import train
from alttrain.run.cli import report_user_errors
from alttrain.run.config import validate_config
from alttrain.run.evaluate import main as evaluate_main

TRAIN_SIZES = (1, 1, 1, 1, 1)  # images per data_batch_1..5: 5 CIFAR-10 training images in all
RUN = ("data=cifar10", "model=dcgan", "debug=default", "data.batch_size=2", "trainer.max_steps=2",
       "trainer.sample_every=0", "trainer.checkpoint_every=2", "trainer.log_every=1", "trainer.progress=never",
       "metrics.num_samples=2")  # 2 real, 2 generated: enough for FID, KID and IS, too few for precision/recall
# The generated files cannot match torchvision's MD5 list of the official archive; everything after that
# check is real. Subprocesses get the same patch from a sitecustomize module on their PYTHONPATH.
SITECUSTOMIZE = "import torchvision.datasets.cifar as c\nc.check_integrity = lambda *args, **kwargs: True\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """``(path, sha256)`` of random weights of the FID Inception's architecture and tensor names."""
    from torchvision.models import inception_v3

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
        for m in net.modules():
            # torchvision's default init shrinks activations ~3x per conv (pool features ~1e-7 after all
            # of them); He init keeps them of order 1, so the scores below are far from rounding noise.
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def net(weights):
    return load_inception(*weights)


def write_cifar10(root) -> np.ndarray:
    """CIFAR-10 in the official python format (pickled batches of row-major RGB rows); returns the training
    images (N, 32, 32, 3). Unlike test_configs.write_cifar10 (all zeros), the images differ, so features do."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows = rng.integers(0, 256, (sum(TRAIN_SIZES) + 2, 3072), dtype=np.uint8)
    start = 0
    for i, n in enumerate(TRAIN_SIZES, 1):
        batch = {"data": rows[start:start + n], "labels": list(range(start, start + n))}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
        start += n
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows[start:], "labels": [0, 1]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    return rows[:start].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """``(data root, train images, env)``: env runs a subprocess with the MD5 check patched, on one thread."""
    root = tmp_path_factory.mktemp("cifar")
    images = write_cifar10(root)
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return root, images, env_with_pythonpath(site, OMP_NUM_THREADS="1")


@pytest.fixture
def patched_cifar(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)


def run_script(script: str, *args: str, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True, env=env,
                          timeout=300)


# ---------------------------------------------------------------- weights file


def test_images_are_quantised_like_a_saved_png_and_gray_becomes_rgb():
    x = torch.tensor([-1.0, -0.5, 0.0, 1.0]).reshape(1, 1, 2, 2)
    out = to_uint8_rgb(x)
    # round((x + 1) * 127.5): 0, 63.75 -> 64, 127.5 -> 128 (half to even), 255.
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 2)
    assert out[0, 0].flatten().tolist() == [0, 64, 128, 255] and torch.equal(out[0, 0], out[0, 2])
    with pytest.raises(ConfigError, match="1 or 3"):
        to_uint8_rgb(torch.zeros(1, 2, 4, 4))


def test_a_missing_file_or_a_wrong_hash_is_one_config_error_line(weights, tmp_path):
    path, sha = weights
    with pytest.raises(ConfigError) as missing:
        load_inception(tmp_path / "absent.pth")
    assert str(missing.value).startswith(f"metrics.inception_weights={tmp_path / 'absent.pth'}: no such file")
    assert WEIGHTS_URL in str(missing.value)
    with pytest.raises(ConfigError) as wrong:
        load_inception(path)  # random weights against the published hash
    text = str(wrong.value)
    assert f"SHA-256 {sha}, expected {PUBLISHED_SHA256}" in text and f"metrics.inception_sha256={sha}" in text
    with pytest.raises(ConfigError, match=r"^inception_weights=.*set inception_sha256="):
        load_inception(path, prefix="")  # the evaluate command's keys
    assert "\n" not in str(missing.value) + text


class _RunsCode:
    def __reduce__(self):
        return (RAN.append, ("unpickled",))


RAN: list[str] = []


@pytest.mark.parametrize("content, problem", [
    (lambda p: p.write_bytes(b"not a checkpoint"), "not a plain state dict"),
    (lambda p: torch.save({"payload": _RunsCode()}, p), "not a plain state dict"),
    (lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "does not hold Inception-v3 FID weights"),
])
def test_a_file_that_is_not_inception_weights_is_refused_without_unpickling_it(tmp_path, content, problem):
    path = tmp_path / "w.pth"
    content(path)
    with pytest.raises(ConfigError, match=problem):
        load_inception(path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert RAN == []


def test_the_config_refuses_a_malformed_hash():
    validate_config(compose_config("metrics.inception_weights=/w.pth", f"metrics.inception_sha256={PUBLISHED_SHA256}"))
    with pytest.raises(ConfigError, match="metrics.inception_sha256 must be a SHA-256"):
        validate_config(compose_config("metrics.inception_sha256=6726825d"))


# ---------------------------------------------------------------- scores


def test_scores_on_random_weights(net):
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
    metrics = InceptionMetrics(real, net, kid_subsets=5)
    assert metrics.num_real == 4 and metrics.real_features.shape == (4, 2048)
    state = torch.get_rng_state()
    out = metrics.compute((real + 0.5).clamp(-1, 1))  # brighter copies: close, yet not the same
    assert torch.equal(torch.get_rng_state(), state)
    # 4 samples: precision/recall (k=3) are defined, density/coverage (k=5) are left out.
    assert set(out) == {f"inception/{k}" for k in ("fid", "kid", "kid_std", "is", "is_std", "precision", "recall")}
    assert out["inception/fid"] > 1.0 and out["inception/kid"] > 0
    assert all(math.isfinite(v) for v in out.values())
    # IS over 4 splits of one image each is exactly 1: a split's KL to its own mean is 0.
    assert out["inception/is"] == pytest.approx(1.0, abs=1e-9) and metrics.real_is == pytest.approx(1.0, abs=1e-9)


# ---------------------------------------------------------------- runs


def test_a_cifar10_run_without_weights_says_why_no_image_metric_ran(cifar, patched_cifar, tmp_path):
    root, _, _ = cifar
    assert train(compose_config(*RUN, f"data.root={root}"), tmp_path) == {}
    record = json.loads((tmp_path / "metrics.json").read_text())
    assert record == {"step": 2, "note": "no Inception weights given (metrics.inception_weights): no image metric ran",
                      "history": [{"step": 2}]}


@pytest.fixture(scope="module")
def inception_run(cifar, weights, tmp_path_factory):
    """A cifar10 run scored with the (random) Inception weights, through the entry scripts/train.py calls
    (in-process: a subprocess would add seconds of imports; the evaluate test below runs its script)."""
    root, _, _ = cifar
    path, sha = weights
    run_dir = tmp_path_factory.mktemp("run")
    overrides = [*RUN, f"data.root={root}", f"metrics.inception_weights={path}", f"metrics.inception_sha256={sha}"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
        final = train(compose_config(*overrides), run_dir, overrides)
    record = json.loads((run_dir / "metrics.json").read_text())
    assert final == {k: v for k, v in record.items() if k.startswith("inception/")}
    return run_dir, record


def test_a_cifar10_run_with_weights_records_the_inception_metrics_and_how(inception_run, weights):
    _, record = inception_run
    path, sha = weights
    names = {f"inception/{k}" for k in ("fid", "kid", "kid_std", "is", "is_std")}
    assert set(record) == {"step", "features", "history"} | names
    assert record["features"] == {"inception": {
        "extractor": EXTRACTOR, "weights": str(path.resolve()), "weights_sha256": sha, "resize": RESIZE,
        "real_is": pytest.approx(1.0, abs=1e-9), "num_real": 2, "num_fake": 2,
        "k": {"precision_recall": 3, "density_coverage": 5}}}
    assert record["inception/fid"] > 0 and all(math.isfinite(record[k]) for k in names)
    # The history travels in checkpoints: numbers only, the record of how stays out of it.
    assert record["history"] == [{"step": 2, **{k: record[k] for k in names}}]


def test_evaluate_reproduces_a_runs_final_metrics_from_its_checkpoint(inception_run, patched_cifar, tmp_path, capsys):
    run_dir, record = inception_run
    out = tmp_path / "eval.json"
    # In-process (the main scripts/evaluate.py calls), to spare a second Inception start-up; the folder test
    # below runs the script. The weights and their hash come from the run's stored config; samples use the
    # run's noise and count.
    evaluate_main([f"checkpoint={run_dir}", f"out={out}"])
    result = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == result
    assert result["checkpoint"] == str(run_dir / "checkpoints" / "last.pt") and result["step"] == 2
    assert result["data"] == "cifar10" and result["num_samples"] == 2
    assert result["features"] == record["features"]
    assert {k: result[k] for k in record if k.startswith("inception/")} == \
        {k: pytest.approx(v, rel=1e-9, abs=1e-12) for k, v in record.items() if k.startswith("inception/")}


def test_evaluate_scores_a_folder_of_images_and_the_real_set_scores_itself_perfectly(cifar, weights, tmp_path):
    root, images, env = cifar
    path, sha = weights
    for i, image in enumerate(images):  # the training set itself, as PNG (lossless: the same uint8 values)
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    proc = run_script("evaluate.py", f"images={tmp_path}", "data=cifar10", f"data.root={root}",
                      f"inception_weights={path}", f"inception_sha256={sha}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["images"] == str(tmp_path.resolve()) and result["num_samples"] == len(images) == 5
    assert result["features"]["inception"]["num_real"] == 5 and result["features"]["inception"]["num_fake"] == 5
    assert abs(result["inception/fid"]) < 1e-3  # the same five images, in another order
    assert result["inception/precision"] == result["inception/recall"] == 1.0


def test_evaluate_bad_input_is_one_error_line(cifar, patched_cifar, tmp_path, capsys):
    root, images, _ = cifar
    good, bad = tmp_path / "good", tmp_path / "bad"
    for folder in (good, bad):
        folder.mkdir()
        Image.fromarray(images[0]).save(folder / "a.png")
        Image.fromarray(images[1]).save(folder / "b.jpg")
    (bad / "c.png").write_bytes(b"not a png")
    data = ["data=cifar10", f"data.root={root}"]
    cases = [
        ([f"images={tmp_path / 'absent'}", *data], "no such folder"),
        ([f"images={bad}", *data], f"cannot read image {bad / 'c.png'}"),
        ([f"images={good}", *data], "no metric applies to data cifar10 without Inception weights"),
        ([f"images={good}", *data, f"inception_weights={tmp_path / 'w.pth'}"], "inception_weights=.*: no such file"),
        ([f"images={good}", *data, "num_samples=3"], "holds only 2 images"),
        ([f"images={good}", "data=cifar10", f"data.root={tmp_path}"], "CIFAR-10 not found"),
        ([f"images={good}"], "needs the data set"),
        ([f"checkpoint={tmp_path}"], "no checkpoint in directory"),
        (["checkpoint=x", f"images={good}"], "exactly one of"),
        (["checkpoint=x", "num_sample=3"], "unknown argument 'num_sample=3'"),
    ]
    for argv, problem in cases:
        with pytest.raises(SystemExit) as exit_:
            report_user_errors(evaluate_main, argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), (argv, err)
        assert re.search(problem, err), (argv, err)
