"""Every option of every config group composes through Hydra and builds real objects."""

import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import CONF, compose_config
from PIL import Image

from alttrain.errors import DataError
from alttrain.run.build import build_components


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_groups_offer_what_the_docs_promise():
    assert options("data") == ["cifar10", "dataset", "digits", "grid25", "image_folder", "mnist", "ring8"]
    assert options("model") == ["bigan", "dcgan", "dcgan_acgan", "dcgan_cond", "dcgan_sn", "mlp", "resnet",
                                "resnet_cond"]
    assert options("loss") == ["acgan", "bigan", "hinge", "lsgan", "ns", "wgan_gp"]
    assert options("experiment") == ["bigan_ring8", "digits", "digits_cond", "grid25", "resnet_cifar10", "ring8"]
    assert options("logger") == ["csv", "mlflow", "tensorboard", "wandb"]
    assert options("augment") == ["ada", "ada_digits", "diffaug", "none"]
    assert options("hparams_search") == ["digits_optuna", "ring8_optuna"]
    assert options("debug") == ["default", "profile"]


def test_the_default_config_is_the_digits_experiment():
    cfg = compose_config()
    assert cfg.data._target_ == "alttrain.data.digits" and cfg.model.generator._target_.endswith("DCGANGenerator")
    assert cfg.trainer.phases.D.repeat == cfg.trainer.n_critic == 1
    assert cfg.augment.kind == "ada" and cfg.trainer.ema.half_life_samples == 5000 and cfg.trainer.max_steps == 2400
    assert cfg.loss.d.fn._target_.endswith("d_hinge") and cfg.model.discriminator.norm == "spectral"
    assert list(cfg.optim.discriminator.optimizer.betas) == list(cfg.optim.generator.optimizer.betas) == [0.0, 0.9]
    assert cfg.optim.discriminator.optimizer.lr == cfg.optim.generator.optimizer.lr == 6.0e-4


def write_mnist(root):
    for split in ("train", "t10k"):
        for kind, magic, array in (("images", 0x0803, np.zeros((4, 28, 28))), ("labels", 0x0801, np.arange(4))):
            path = root / "MNIST" / "raw" / f"{split}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
            path.parent.mkdir(parents=True, exist_ok=True)
            header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
            path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_cifar10(root, monkeypatch):
    import torchvision

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    # The fake files cannot match torchvision's MD5 list; everything after that check is real.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)


def write_image_folder(root):
    for i in range(4):
        path = root / "cls" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (i * 60, 0, 0)).save(path)


@pytest.mark.parametrize("data", options("data"))
@pytest.mark.parametrize("loss", options("loss"))
def test_every_data_set_builds_with_every_loss(data, loss, tmp_path, monkeypatch):
    points = data in ("ring8", "grid25")
    if loss == "bigan" or (loss == "acgan" and points):
        pytest.skip("the bigan loss plays its own three networks (experiment=bigan_ring8); acgan is for images")
    model = "mlp" if points else ("dcgan_acgan" if loss == "acgan" else "dcgan")
    extra = ["augment=none"] if points else []  # the main job's experiment augments images, which points are not
    if data in ("mnist", "cifar10", "image_folder"):
        {"mnist": write_mnist, "image_folder": write_image_folder,
         "cifar10": lambda r: write_cifar10(r, monkeypatch)}[data](tmp_path)
        extra = [f"data.root={tmp_path}", "data.batch_size=2", "data.image_size=16"]
    if data == "dataset":  # any Dataset by _target_: torchvision's FakeData yields (PIL image, label)
        extra = ["data.dataset._target_=torchvision.datasets.FakeData", "+data.dataset.size=4",
                 "+data.dataset.image_size=[3,16,16]", "data.batch_size=2"]
    cfg = compose_config(f"data={data}", f"model={model}", f"loss={loss}", *extra)
    comps = build_components(cfg)
    batch = next(comps.data.stream(seed=0))
    assert batch.samples.shape[1:] == comps.data.sample_shape
    n = batch.samples.shape[0]
    assert batch.labels is not None and batch.labels.shape == (n,) and batch.labels.dtype == torch.int64
    z, labels = comps.prior.sample(n)
    fake = comps.generator.module(z, labels) if comps.generator.conditional else comps.generator.module(z)
    logits = comps.networks["discriminator"].module(fake)
    logits = logits[0] if isinstance(logits, tuple) else logits  # ACGAN's D: (logit, class logits)
    assert logits.shape == (n,)
    assert [p.name for p in comps.phases] == ["D", "G"]


@pytest.mark.parametrize("experiment", options("experiment"))
@pytest.mark.parametrize("debug", [None, "default"])
def test_every_experiment_builds_with_and_without_debug(experiment, debug, tmp_path, monkeypatch):
    overrides = [f"experiment={experiment}"] + ([f"debug={debug}"] if debug else [])
    cfg = compose_config(*overrides)
    if cfg.data._target_ == "alttrain.data.cifar10":  # read from a folder that data.root must name: fake files
        write_cifar10(tmp_path, monkeypatch)
        cfg = compose_config(*overrides, f"data.root={tmp_path}", "data.batch_size=2")
    comps = build_components(cfg)
    if debug:
        assert cfg.trainer.max_steps == 20
    assert comps.prior.shape == (cfg.model.latent_dim,)


@pytest.mark.parametrize("norm_g, norm_d", [("batch", "spectral"), ("none", "none"), ("batch", "batch")])
def test_dcgan_norm_options_build(norm_g, norm_d):
    cfg = compose_config(f"model.generator.norm={norm_g}", f"model.discriminator.norm={norm_d}")
    comps = build_components(cfg)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in comps.networks["discriminator"].module.modules())
    assert has_bn == (norm_d == "batch")


def test_a_torchvision_set_without_its_files_names_the_path(tmp_path):
    cfg = compose_config("data=cifar10", f"data.root={tmp_path}")
    with pytest.raises(DataError, match=str(tmp_path)):
        build_components(cfg)
