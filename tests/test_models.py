"""Model shapes, documented parameter names, normalisation options, initialisation and argument checks."""

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from alttrain.engine.params import match_names
from alttrain.errors import ConfigError
from alttrain.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)

SIZES = [8, 16, 32, 64]


def names(module):
    return [n for n, _ in module.named_parameters()]


# --- MLP -----------------------------------------------------------------------------------------

def test_mlp_shapes_and_latent_dim():
    g, d = MLPGenerator(latent_dim=3, out_dim=5, hidden_dim=16, depth=3), MLPDiscriminator(in_dim=5, hidden_dim=8)
    assert g.latent_dim == 3
    x = g(torch.randn(7, 3))
    assert x.shape == (7, 5)
    assert d(x).shape == (7,)
    assert d(x[:1]).shape == (1,)  # a batch of one stays a batch


def test_mlp_parameter_names_are_the_documented_ones():
    expected = [f"body.{i}.{k}" for i in range(3) for k in ("weight", "bias")] + ["head.weight", "head.bias"]
    assert names(MLPGenerator(depth=3)) == expected
    assert names(MLPDiscriminator(depth=3)) == expected
    assert [tuple(p.shape) for p in MLPDiscriminator(in_dim=2, hidden_dim=4, depth=1).parameters()] == \
        [(4, 2), (4,), (1, 4), (1,)]


def test_mlp_discriminator_leak():
    d = MLPDiscriminator(in_dim=1, hidden_dim=1, depth=1, negative_slope=0.25)
    with torch.no_grad():
        d.body[0].weight.fill_(1.0), d.body[0].bias.zero_(), d.head.weight.fill_(1.0), d.head.bias.zero_()
    torch.testing.assert_close(d(torch.tensor([[-4.0], [2.0]])), torch.tensor([-1.0, 2.0]))


@pytest.mark.parametrize("cls,kwargs,message", [
    (MLPGenerator, {"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
    (MLPGenerator, {"depth": 0}, "depth must be an integer >= 1, got 0"),
    (MLPGenerator, {"hidden_dim": 2.5}, "hidden_dim must be an integer >= 1, got 2.5"),
    (MLPDiscriminator, {"in_dim": True}, "in_dim must be an integer >= 1, got True"),
    (MLPDiscriminator, {"negative_slope": -0.1}, r"negative_slope must be a number in \[0, 1\), got -0.1"),
])
def test_mlp_bad_arguments_raise_config_error(cls, kwargs, message):
    with pytest.raises(ConfigError, match=f"^{cls.__name__}: {message}$"):
        cls(**kwargs)


# --- DCGAN: shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("g_norm", ["batch", "none"])
def test_generator_shape_and_range(size, g_norm):
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=8, image_size=size, channels=3, base_width=4, norm=g_norm)
    assert g.latent_dim == 8
    assert g(torch.randn(2, 8)).shape == (2, 3, size, size)
    for shift in (10.0, -10.0):  # pre-activations near ±10: only the tanh keeps them in [-1, 1]
        with torch.no_grad():
            g.to_image.bias.fill_(shift)
            x = g(torch.randn(2, 8))
        assert x.abs().max() <= 1.0 and x.abs().min() > 0.99


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("d_norm", ["batch", "spectral", "none"])
def test_discriminator_shape(size, d_norm):
    d = DCGANDiscriminator(image_size=size, channels=3, base_width=4, norm=d_norm)
    assert d(torch.randn(2, 3, size, size)).shape == (2,)
    d.eval()
    assert d(torch.randn(1, 3, size, size)).shape == (1,)


# --- DCGAN: parameter names ----------------------------------------------------------------------

def test_generator_names_are_the_documented_ones():
    g = DCGANGenerator(image_size=32, base_width=4)  # n = 3 doublings: stem, blocks.0-1, to_image
    bn = ["norm.weight", "norm.bias"]
    assert names(g) == (["stem.conv.weight"] + [f"stem.{k}" for k in bn]
                        + [f"blocks.{i}.{k}" for i in range(2) for k in ["conv.weight"] + bn]
                        + ["to_image.weight", "to_image.bias"])
    plain = DCGANGenerator(image_size=32, base_width=4, norm="none")
    assert names(plain) == ["stem.conv.weight", "stem.conv.bias", "blocks.0.conv.weight", "blocks.0.conv.bias",
                            "blocks.1.conv.weight", "blocks.1.conv.bias", "to_image.weight", "to_image.bias"]
    assert names(DCGANGenerator(image_size=8, norm="none")) == [
        "stem.conv.weight", "stem.conv.bias", "to_image.weight", "to_image.bias"]


def test_discriminator_names_are_the_documented_ones():
    d = DCGANDiscriminator(image_size=32, base_width=4)
    assert names(d) == ["blocks.0.conv.weight", "blocks.0.conv.bias",
                        "blocks.1.conv.weight", "blocks.1.norm.weight", "blocks.1.norm.bias",
                        "blocks.2.conv.weight", "blocks.2.norm.weight", "blocks.2.norm.bias",
                        "head.weight", "head.bias"]
    sn = DCGANDiscriminator(image_size=16, base_width=4, norm="spectral")
    assert names(sn) == ["blocks.0.conv.bias", "blocks.0.conv.parametrizations.weight.original",
                         "blocks.1.conv.bias", "blocks.1.conv.parametrizations.weight.original",
                         "head.bias", "head.parametrizations.weight.original"]


def test_documented_patterns_select_whole_blocks():
    d = DCGANDiscriminator(image_size=64, base_width=2)
    assert match_names(["blocks.1.*"], names(d)) == ["blocks.1.conv.weight", "blocks.1.norm.weight",
                                                     "blocks.1.norm.bias"]
    assert match_names(["head.*"], names(d)) == ["head.weight", "head.bias"]
    g = DCGANGenerator(image_size=64, base_width=2)
    assert match_names(["*.norm.*"], names(g)) == [n for n in names(g) if ".norm." in n] != []
    assert match_names(["stem.*", "blocks.*", "to_image.*"], names(g)) == names(g)


@pytest.mark.parametrize("widths", [(2, 3), (5, 1)])
def test_dcgan_widths_double_towards_the_4x4_map(widths):
    base, channels = widths
    g = DCGANGenerator(latent_dim=7, image_size=32, channels=channels, base_width=base)
    d = DCGANDiscriminator(image_size=32, channels=channels, base_width=base)
    assert [tuple(p.shape) for n, p in g.named_parameters() if n.endswith("conv.weight") or n == "to_image.weight"] \
        == [(7, 4 * base, 4, 4), (4 * base, 2 * base, 4, 4), (2 * base, base, 4, 4), (base, channels, 4, 4)]
    assert [tuple(p.shape) for n, p in d.named_parameters() if n.endswith("weight") and ".norm." not in n] \
        == [(base, channels, 4, 4), (2 * base, base, 4, 4), (4 * base, 2 * base, 4, 4), (1, 4 * base, 4, 4)]


# --- DCGAN: normalisation ------------------------------------------------------------------------

def count(module, kind):
    return sum(isinstance(m, kind) for m in module.modules())


@pytest.mark.parametrize("size", SIZES)
def test_batch_norm_placement(size):
    n = size.bit_length() - 3  # doublings from 4×4
    assert count(DCGANGenerator(image_size=size, base_width=2), nn.BatchNorm2d) == n  # stem + blocks
    assert count(DCGANGenerator(image_size=size, base_width=2, norm="none"), nn.BatchNorm2d) == 0
    assert count(DCGANDiscriminator(image_size=size, base_width=2), nn.BatchNorm2d) == n - 1  # not the input block
    for norm in ("spectral", "none"):
        assert count(DCGANDiscriminator(image_size=size, base_width=2, norm=norm), nn.BatchNorm2d) == 0


def test_spectral_norm_reparametrises_every_discriminator_weight():
    d = DCGANDiscriminator(image_size=32, base_width=4, norm="spectral")
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(parametrize.is_parametrized(m, "weight") for m in convs)
    d.eval()  # eval: no power-iteration update, so the stored σ estimate is used as is
    for m in convs:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, rel=0.05)
    for norm in ("batch", "none"):
        plain = DCGANDiscriminator(image_size=32, base_width=4, norm=norm)
        assert not any(parametrize.is_parametrized(m) for m in plain.modules())


# --- DCGAN: initialisation and determinism -------------------------------------------------------

def test_dcgan_initialisation():
    torch.manual_seed(0)
    g = DCGANGenerator(latent_dim=64, image_size=32, base_width=64)
    w = g.blocks[0].conv.weight  # 256·128·16 ≈ 5e5 draws: the std is 0.02 to well under 1 %
    assert w.mean().abs() < 1e-4 and w.std().item() == pytest.approx(0.02, rel=0.01)
    bn = g.stem.norm.weight
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01) and 0.01 < bn.std().item() < 0.03
    d = DCGANDiscriminator(image_size=32, base_width=64, norm="none")
    biases = [p for n, p in list(g.named_parameters()) + list(d.named_parameters()) if n.endswith("bias")]
    assert len(biases) == 8 and all(torch.equal(b, torch.zeros_like(b)) for b in biases)


@pytest.mark.parametrize("make", [
    lambda: (DCGANGenerator(latent_dim=8, image_size=16, base_width=4), (3, 8)),
    lambda: (DCGANDiscriminator(image_size=16, base_width=4, norm="spectral"), (3, 1, 16, 16)),
    lambda: (MLPGenerator(), (3, 2)),
    lambda: (MLPDiscriminator(), (3, 2)),
])
def test_same_seed_same_model_and_outputs(make):
    def build():
        torch.manual_seed(123)
        model, shape = make()
        return model, model(torch.randn(shape)), model.state_dict()

    (_, y1, s1), (_, y2, s2) = build(), build()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert torch.equal(y1, y2)
    weight = next(k for k in s1 if "weight" in k)
    torch.manual_seed(124)  # and the seed matters, so the equalities above are not vacuous
    assert not torch.equal(make()[0].state_dict()[weight], s1[weight])


# --- DCGAN: argument and input checks ------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs,message", [
    (DCGANGenerator, {"image_size": 30}, r"image_size must be 8·2\^k \(8, 16, 32, 64, \.\.\.\), got 30"),
    (DCGANGenerator, {"image_size": 4}, r"image_size must be 8·2\^k .*, got 4"),
    (DCGANDiscriminator, {"image_size": 48}, r"image_size must be 8·2\^k .*, got 48"),
    (DCGANDiscriminator, {"image_size": 32.0}, r"image_size must be 8·2\^k .*, got 32.0"),
    (DCGANGenerator, {"norm": "spectral"}, "norm must be one of batch, none, got 'spectral'"),
    (DCGANDiscriminator, {"norm": "layer"}, "norm must be one of batch, spectral, none, got 'layer'"),
    (DCGANGenerator, {"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
    (DCGANGenerator, {"channels": -1}, "channels must be an integer >= 1, got -1"),
    (DCGANDiscriminator, {"base_width": "64"}, "base_width must be an integer >= 1, got '64'"),
])
def test_dcgan_bad_arguments_raise_config_error(cls, kwargs, message):
    with pytest.raises(ConfigError, match=f"^{cls.__name__}: {message}$"):
        cls(**kwargs)


def test_mismatched_inputs_raise_config_error_instead_of_wrong_logits():
    d = DCGANDiscriminator(image_size=32, channels=1, base_width=2)
    with pytest.raises(ConfigError, match=r"expects input of shape \(B, 1, 32, 32\), got \(2, 1, 64, 64\)"):
        d(torch.randn(2, 1, 64, 64))  # would otherwise give 2·25 "logits"
    g = DCGANGenerator(latent_dim=8, image_size=8, base_width=2)
    with pytest.raises(ConfigError, match=r"expects input of shape \(B, 8\), got \(2, 4\)"):
        g(torch.randn(2, 4))
