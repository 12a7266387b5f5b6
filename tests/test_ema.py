"""The EMA generator: decay from a half-life in samples, ramp-up, buffers, trainer and checkpoints."""

import functools

import pytest
import torch
from conftest import RING8, compose_config, payload_of
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from alttrain.data import ring8
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss
from alttrain.models import MLPDiscriminator, MLPGenerator
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.persist.resume import restore_trainer
from alttrain.run.app import make_callbacks, train
from alttrain.run.build import build_components
from alttrain.scale.ema import EMA, make_ema


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)


def test_the_decay_comes_from_a_half_life_in_samples_whatever_the_batch():
    ema = EMA(Tiny(), half_life_samples=64)
    assert ema.beta(64) == 0.5 and ema.beta(128) == 0.25  # one half-life, two half-lives
    # Four updates of 16 samples keep as much of the old average as one update of 64.
    assert ema.beta(16) ** 4 == pytest.approx(ema.beta(64), rel=1e-12)


def test_an_update_averages_parameters_and_batchnorm_statistics_and_copies_the_rest():
    src = Tiny()
    ema = EMA(src, half_life_samples=64)
    with torch.no_grad():
        ema.model.lin.weight.fill_(0.0), src.lin.weight.fill_(4.0)
        ema.model.bn.running_mean.fill_(1.0), src.bn.running_mean.fill_(3.0)
        src.bn.num_batches_tracked.fill_(7)
    assert ema.update(64) == 0.5
    # beta = 0.5: (0 + 4) / 2 and (1 + 3) / 2, exactly; the integer counter is copied.
    assert ema.model.lin.weight.item() == 2.0 and ema.model.bn.running_mean.item() == 2.0
    assert ema.model.bn.num_batches_tracked.item() == 7 and ema.samples == 64
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training


def test_rampup_starts_by_copying_then_caps_the_half_life_by_samples_seen():
    src = Tiny()
    ema = EMA(src, half_life_samples=10_000, rampup=0.5)
    with torch.no_grad():
        ema.model.lin.weight.fill_(-1.0), src.lin.weight.fill_(3.0)
    assert ema.update(64) == 0.0 and ema.model.lin.weight.item() == 3.0  # nothing seen yet: a copy
    # 64 samples seen: half-life min(10000, 0.5 * 64) = 32, so beta = 0.5 ** (64 / 32).
    assert ema.beta(64) == 0.25


def test_spectral_norm_vectors_are_copied_not_averaged():
    src = spectral_norm(nn.Linear(3, 3))
    ema = EMA(src, half_life_samples=1000)
    src(torch.randn(2, 3))  # a training-mode forward runs a power iteration: u and v move
    ema.update(10)
    u = "parametrizations.weight.0._u"
    # An average of unit vectors is no unit vector; a copy is.
    assert torch.equal(ema.model.state_dict()[u], src.state_dict()[u])


def setup_trainer(ema_half_life: int, n_critic: int = 2):
    torch.manual_seed(0)
    G, D = MLPGenerator(hidden_dim=8, depth=1), MLPDiscriminator(hidden_dim=8, depth=1)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, [{"name": "all", "params": ["*"]}], adam)
    phases = [Phase("D", d, DiscriminatorLoss(losses.d_logistic), repeat=n_critic),
              Phase("G", g, GeneratorLoss(losses.g_nonsaturating), accumulate=2)]
    ema = EMA(G, ema_half_life)
    return Trainer([g, d], phases, ring8(batch_size=16).stream(seed=0), max_steps=3,
                   ema=ema), ema


def test_the_trainer_moves_the_ema_after_each_generator_update_only():
    trainer, ema = setup_trainer(ema_half_life=1)
    before = [p.detach().clone() for p in ema.model.parameters()]
    trainer.fit()
    assert ema.samples == 3 * 16 * 2  # G updates x batch x accumulate; D updates do not count
    # A half-life of one sample keeps 0.5 ** 32 of the old average: the EMA is G.
    for e, g, b in zip(ema.model.parameters(), trainer.network("generator").module.parameters(), before):
        assert torch.allclose(e, g, atol=1e-8) and not torch.equal(e, b)


def test_checkpoint_round_trip_restores_the_average_and_its_sample_count():
    trainer, ema = setup_trainer(ema_half_life=100)
    trainer.fit()
    state = payload_of(trainer)
    assert set(state["ema"]["model"]) == set(trainer.network("generator").module.state_dict())
    fresh, fresh_ema = setup_trainer(ema_half_life=100)
    restore_trainer(fresh, state)
    assert fresh_ema.samples == ema.samples
    assert all(torch.equal(a, b) for a, b in zip(fresh_ema.model.parameters(), ema.model.parameters()))


def test_samples_and_metrics_draw_from_the_ema_copy(tmp_path):
    cfg = compose_config(*RING8, "trainer.ema.half_life_samples=1000")
    comps = build_components(cfg)
    samples, metrics = make_callbacks(cfg, comps, tmp_path, "yaml")[1:3]
    assert samples.generator_fn() is comps.ema.model is metrics.evaluate.generator_fn()
    assert comps.ema.source is comps.generator.module
    off = build_components(compose_config(*RING8))
    assert off.ema is None and make_callbacks(compose_config(*RING8), off, tmp_path, "")[1].generator_fn() \
        is off.generator.module


def test_a_configured_run_stores_the_ema_where_scripts_sample_reads_it(tmp_path):
    train(compose_config(*RING8, "debug=default", "trainer.max_steps=3", "metrics.num_samples=100",
                         "trainer.progress=never", "trainer.ema.half_life_samples=500", "trainer.ema.rampup=0.05"),
          tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert set(ckpt["ema"]["model"]) == set(ckpt["models"]["generator"])
    assert ckpt["ema"]["samples"] == 3 * 256 and ckpt["ema"]["rampup"] == 0.05


@pytest.mark.parametrize("override, message", [
    ("trainer.ema.half_life_samples=0", "trainer.ema.half_life_samples must be an integer >= 1"),
    ("trainer.ema.rampup=-1", "trainer.ema.rampup must be a number > 0"),
    ("+trainer.ema.decay=0.999", "unknown config key 'trainer.ema.decay'"),
    ("trainer.ema.rampup=0.05", "trainer.ema.rampup is set but trainer.ema.half_life_samples is null"),
])
def test_bad_ema_settings_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        build_components(compose_config(*RING8, override))


def test_make_ema_is_off_without_a_half_life():
    assert make_ema(Tiny(), None) is None
    assert isinstance(make_ema(Tiny(), 10, 0.1), EMA)
