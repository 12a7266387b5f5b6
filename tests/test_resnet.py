"""The ResNet SNGAN / SAGAN models: shapes, spectral norm, attention, initialisation, argument checks, and
tiny real runs of model=resnet and model=resnet_cond through scripts/train.py."""

import math
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, SCRIPTS, compose_config, env_with_pythonpath
from torch import nn
from torch.nn.utils import parametrize

import alttrain.models as models
from alttrain.errors import ConfigError
from alttrain.models import (
    ConditionalResNetGenerator,
    ResNetDiscriminator,
    ResNetGenerator,
    ResNetProjectionDiscriminator,
)
from alttrain.models.resnet_blocks import SelfAttention
from alttrain.persist.checkpoint import load_checkpoint

WIDTH = {32: 8, 64: 16}  # the smallest widths: at 64 the blocks halve the width four times
CASES = [(size, attention) for size in (32, 64) for attention in (None, 16)]


def make(cls, size, attention=None, channels=3, **kwargs):
    kwargs = {"image_size": size, "channels": channels, "width": WIDTH[size], "attention": attention, **kwargs}
    if cls in (ResNetGenerator, ConditionalResNetGenerator):
        kwargs["latent_dim"] = 8
    if cls in (ConditionalResNetGenerator, ResNetProjectionDiscriminator):
        kwargs.setdefault("num_classes", 5)
    return cls(**kwargs)


def names(module):
    return [n for n, _ in module.named_parameters()]


# --- shapes, gradients, attention ----------------------------------------------------------------

@pytest.mark.parametrize("size, attention", CASES)
@pytest.mark.parametrize("conditional", [False, True])
def test_each_pair_maps_z_to_images_to_logits_and_back_propagates(size, attention, conditional):
    torch.manual_seed(0)
    g = make(ConditionalResNetGenerator if conditional else ResNetGenerator, size, attention)
    d = make(ResNetProjectionDiscriminator if conditional else ResNetDiscriminator, size, attention)
    assert g.latent_dim == 8 and isinstance(g.latent_dim, int)
    labels = torch.tensor([0, 4, 2], dtype=torch.int64)
    extra = (labels,) if conditional else ()
    x = g(torch.randn(3, 8), *extra)
    assert x.shape == (3, 3, size, size) and x.abs().max() <= 1.0
    logits = d(x, *extra)
    assert logits.shape == (3,)
    logits.sum().backward()
    for net in (g, d):
        grads = {n: p.grad for n, p in net.named_parameters()}
        assert all(grad is not None and torch.isfinite(grad).all() for grad in grads.values()), net
        assert ("attention.gamma" in grads) == (attention is not None)
        if attention is not None:
            assert net.attention.gamma.item() == 0.0 and grads["attention.gamma"] != 0  # starts at 0, learns
    d.eval()
    assert d(x[:1], *(t[:1] for t in extra)).shape == (1,)  # a batch of one stays a batch


@pytest.mark.parametrize("size, attention", CASES)
def test_spectral_norm_on_every_discriminator_weight_and_only_on_attention_in_the_generator(size, attention):
    for cls in (ResNetDiscriminator, ResNetProjectionDiscriminator):
        modules = list(make(cls, size, attention).modules())
        layers = [m for m in modules if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
        assert layers and all(parametrize.is_parametrized(m, "weight") for m in layers)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    for cls in (ResNetGenerator, ConditionalResNetGenerator):
        g = make(cls, size, attention)
        normalised = {n.split(".parametrizations")[0] for n in names(g) if ".parametrizations." in n}
        expected = {f"attention.{k}" for k in ("theta", "phi", "g", "out")} if attention else set()
        assert normalised == expected


def test_a_fresh_attention_block_is_exactly_the_identity_and_attends_once_gamma_moves():
    torch.manual_seed(0)
    block = SelfAttention(16)
    x = torch.randn(2, 16, 8, 8)
    assert block.gamma.item() == 0.0 and torch.equal(block(x), x)
    with torch.no_grad():
        block.gamma.fill_(1.0)
    out = block(x)
    assert not torch.allclose(out, x)
    # Non-local: changing one position of the input changes the output at a distant one.
    y = x.clone()
    y[:, :, 0, 0] += 5.0
    assert not torch.allclose(block(y)[:, :, 7, 7], out[:, :, 7, 7])


@pytest.mark.parametrize("network, size, attention, after", [
    ("g", 32, 8, 0), ("g", 32, 16, 1), ("g", 32, 32, 2), ("g", 64, 64, 3),
    ("d", 32, 16, 0), ("d", 32, 8, 1), ("d", 64, 32, 0), ("d", 64, 8, 2),
])
def test_attention_sits_after_the_first_block_whose_map_has_that_side(network, size, attention, after):
    net = make(ResNetGenerator if network == "g" else ResNetDiscriminator, size, attention)
    seen = []
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: seen.append((i, out.shape[-1])))
    net.attention.register_forward_hook(lambda m, a, out: seen.append(("attention", out.shape[-1])))
    net(torch.randn(2, 8) if network == "g" else torch.randn(2, 3, size, size))
    at = seen.index(("attention", attention))
    assert seen[at - 1] == (after, attention)


# --- layout, parameter names, initialisation -----------------------------------------------------

def test_the_paper_layout_at_32_and_mimicry_widths_at_64():
    g32, d32 = ResNetGenerator(image_size=32, channels=3), ResNetDiscriminator(image_size=32, channels=3)
    assert g32.stem.weight.shape == (4 * 4 * 256, 128) and len(g32.blocks) == 3
    assert [b.conv2.out_channels for b in g32.blocks] == [256] * 3 and g32.to_image.weight.shape == (3, 256, 3, 3)
    assert [(b.conv1.in_channels, b.conv2.out_channels, b.down) for b in d32.blocks] == \
        [(3, 128, True), (128, 128, True), (128, 128, False), (128, 128, False)]
    assert [b.shortcut is None for b in d32.blocks] == [False, False, True, True]
    g64, d64 = make(ResNetGenerator, 64), make(ResNetDiscriminator, 64)
    assert g64.stem.out_features == 16 * 16 and [b.conv2.out_channels for b in g64.blocks] == [8, 4, 2, 1]
    assert [b.conv2.out_channels for b in d64.blocks] == [1, 2, 4, 8, 16] and all(b.down for b in d64.blocks)
    assert d64.head.in_features == 16


def test_parameter_names_are_the_documented_ones():
    block = ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "norm2.weight", "norm2.bias",
             "conv2.weight", "conv2.bias", "shortcut.weight", "shortcut.bias"]
    assert names(make(ResNetGenerator, 32)) == (["stem.weight", "stem.bias"]
                                               + [f"blocks.{i}.{k}" for i in range(3) for k in block]
                                               + ["norm.weight", "norm.bias", "to_image.weight", "to_image.bias"])
    cond = names(make(ConditionalResNetGenerator, 32, 16))
    assert "blocks.0.norm1.gain.weight" in cond and "blocks.2.norm2.bias.weight" in cond
    assert cond[cond.index("blocks.2.shortcut.bias") + 1:cond.index("norm.weight")] == [
        "attention.gamma"] + [f"attention.{k}.parametrizations.weight.original" for k in ("theta", "phi", "g", "out")]
    sn = ".parametrizations.weight.original"
    d = names(make(ResNetProjectionDiscriminator, 32))
    assert d[:6] == [f"blocks.0.{k}" for k in ("conv1.bias", f"conv1{sn}", "conv2.bias", f"conv2{sn}",
                                                "shortcut.bias", f"shortcut{sn}")]
    assert d[-3:] == ["head.bias", f"head{sn}", f"embed{sn}"] and not any(n.startswith("blocks.3.shortcut") for n in d)


def test_xavier_uniform_weights_and_zero_biases():
    torch.manual_seed(0)
    g = ResNetGenerator(image_size=32, channels=3, width=32)
    for name, p in g.named_parameters():
        if name.endswith("bias") and ".norm" not in name and not name.startswith("norm"):
            assert torch.equal(p, torch.zeros_like(p)), name
    conv1 = g.blocks[0].conv1.weight  # a 3x3 in the residual branch: gain sqrt(2), as in the SNGAN code
    bound = math.sqrt(2) * math.sqrt(6 / (9 * 32 + 9 * 32))
    assert 0.95 * bound < conv1.abs().max() <= bound


def test_labels_select_the_class_in_both_conditional_networks():
    torch.manual_seed(0)
    g = make(ConditionalResNetGenerator, 32).eval()
    d = make(ResNetProjectionDiscriminator, 32).eval()  # eval: spectral norm keeps its estimate fixed
    with torch.no_grad():
        for norm in (g.blocks[0].norm1.gain, g.blocks[0].norm1.bias):
            norm.weight.normal_()  # distinct per-class tables (fresh ones are nearly equal)
        z = torch.randn(2, 8)
        x0, x1 = g(z, torch.tensor([0, 0])), g(z, torch.tensor([1, 1]))
        assert not torch.allclose(x0, x1)
        # The projection term: D(x, y) - D(x, y') = <embed(y) - embed(y'), phi(x)>.
        phi, emb = d.features(x0), d.embed.weight
        diff = d(x0, torch.tensor([3, 3])) - d(x0, torch.tensor([1, 1]))
        torch.testing.assert_close(diff, phi @ (emb[3] - emb[1]))


@pytest.mark.parametrize("cls, kwargs, message", [
    (ResNetGenerator, {"image_size": 48}, "image_size must be 32 or 64, got 48"),
    (ResNetDiscriminator, {"image_size": "32"}, "image_size must be 32 or 64, got '32'"),
    (ResNetGenerator, {"attention": 12}, r"attention must be null or the side of a feature map its blocks output "
                                         r"\(8, 16, 32\), got 12"),
    (ResNetDiscriminator, {"attention": 32}, r"attention must be null or the side of a feature map its blocks "
                                             r"output \(8, 16\), got 32"),
    (ResNetDiscriminator, {"image_size": 64, "attention": 4}, r"attention must be null .* \(8, 16, 32\), got 4"),
    (ResNetGenerator, {"attention": True}, r"attention must be null .* \(8, 16, 32\), got True"),
    (ResNetGenerator, {"image_size": 64, "width": 24}, "width must be a multiple of 16 at image_size 64 "
                                                      r"\(the blocks halve it four times\), got 24"),
    (ResNetDiscriminator, {"width": 0}, "width must be an integer >= 1, got 0"),
    (ResNetGenerator, {"latent_dim": 2.5}, "latent_dim must be an integer >= 1, got 2.5"),
    (ConditionalResNetGenerator, {"num_classes": 0}, "num_classes must be an integer >= 1, got 0"),
    (ResNetProjectionDiscriminator, {"channels": False}, "channels must be an integer >= 1, got False"),
])
def test_bad_arguments_raise_config_error_naming_the_argument(cls, kwargs, message):
    with pytest.raises(ConfigError, match=f"^{cls.__name__}: {message}"):
        cls(**kwargs)


def test_inputs_of_the_wrong_shape_are_named():
    with pytest.raises(ConfigError, match=r"ResNetDiscriminator expects input of shape \(B, 3, 32, 32\), got"):
        make(ResNetDiscriminator, 32)(torch.randn(2, 3, 64, 64))
    with pytest.raises(ConfigError, match=r"ResNetGenerator expects input of shape \(B, 8\)"):
        make(ResNetGenerator, 32)(torch.randn(2, 7))


def test_the_classes_are_exported_and_so_rebuildable_from_checkpoints():
    from alttrain.persist.targets import shipped_model_targets

    targets = shipped_model_targets()
    for name in ("ResNetGenerator", "ConditionalResNetGenerator", "ResNetDiscriminator",
                 "ResNetProjectionDiscriminator"):
        assert name in models.__all__
        assert f"alttrain.models.resnet.{name}" in targets and f"alttrain.models.{name}" in targets


# --- configs ---------------------------------------------------------------------------------------

def test_the_cifar10_experiment_is_the_papers_setup_and_asks_for_data_root(tmp_path, monkeypatch):
    from test_configs import write_cifar10

    from alttrain.run.build import build_components
    from alttrain.run.config import validate_config

    with pytest.raises(ConfigError, match=r"^data.root is required but not set: pass data.root=<value>"):
        validate_config(compose_config("experiment=resnet_cifar10"))
    write_cifar10(tmp_path, monkeypatch)
    cfg = compose_config("experiment=resnet_cifar10", f"data.root={tmp_path}", "data.batch_size=2")
    assert cfg.loss.d.fn._target_ == "alttrain.games.losses.d_hinge" and cfg.trainer.phases.D.repeat == 5
    for net in ("generator", "discriminator"):
        assert cfg.optim[net].optimizer.lr == 2e-4 and list(cfg.optim[net].optimizer.betas) == [0.0, 0.9]
    comps = build_components(cfg)
    g, d = comps.networks["generator"].module, comps.networks["discriminator"].module
    assert type(g) is ResNetGenerator and type(d) is ResNetDiscriminator
    assert (g.latent_dim, g.blocks[0].conv1.out_channels, d.head.in_features, d.channels) == (128, 256, 128, 3)


# --- through the command line ----------------------------------------------------------------------

TINY = ("loss=hinge", "debug=default", "trainer.max_steps=2", "data.image_size=32", "model.g_width=8",
        "model.d_width=8", "metrics.num_samples=64", "trainer.progress=never")
RUNS = {
    "plain": ("model=resnet",),
    "cond_attention": ("model=resnet_cond", "model.attention=16"),
    "bad_size": ("model=resnet", "data.image_size=48"),
}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """The three command-line runs, started together: most of each is interpreter start-up and imports."""
    root = tmp_path_factory.mktemp("resnet_cli")
    env = env_with_pythonpath(OMP_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, str(SCRIPTS / "train.py"), *TINY, *args,
                                     f"hydra.run.dir={root / name}"], cwd=ROOT, env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in RUNS.items()}
    done = {}
    for name, proc in procs.items():
        _, stderr = proc.communicate(timeout=300)
        done[name] = (proc.returncode, stderr, root / name)
    return done


def test_model_resnet_trains_from_the_command_line(cli_runs):
    code, stderr, run = cli_runs["plain"]
    assert code == 0, stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["step"] == 2 and not ckpt["meta"]["conditional"]
    assert ckpt["models"]["generator"]["blocks.2.conv2.weight"].shape == (8, 8, 3, 3)
    assert ckpt["models"]["discriminator"]["blocks.0.conv1.parametrizations.weight.original"].shape == (8, 1, 3, 3)


def test_model_resnet_cond_with_attention_trains_and_its_generator_rebuilds(cli_runs):
    from alttrain.run.sample import load_generator

    code, stderr, run = cli_runs["cond_attention"]
    assert code == 0, stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["meta"]["conditional"] and ckpt["meta"]["num_classes"] == 10
    for net in ("generator", "discriminator"):
        weights = ckpt["models"][net]
        assert weights["attention.gamma"].item() != 0.0, net  # trained away from its initial 0
    assert ckpt["models"]["discriminator"]["embed.parametrizations.weight.original"].shape == (10, 8)
    generator, meta = load_generator(run)  # the shipped allow-list covers the new classes
    assert type(generator) is ConditionalResNetGenerator and generator.attention is not None
    assert generator(torch.randn(3, 128), torch.tensor([0, 5, 9])).shape == (3, 1, 32, 32)


def test_an_image_size_the_models_cannot_take_is_one_error_line(cli_runs):
    code, stderr, run = cli_runs["bad_size"]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert errors[0].startswith("error: model.generator: ResNetGenerator: image_size must be 32 or 64, got 48")
    assert "filled from the data's sample shape (1, 48, 48)" in errors[0]
    assert not run.exists() or not any(run.rglob("*"))  # nothing written
