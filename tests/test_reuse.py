"""One generator forward per step (trainer.reuse_fakes): when it applies, what it computes, what stays frozen."""

import functools

import pytest
import torch

from alttrain.data import ring8
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.reuse import plan_reuse
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss, R1Penalty
from alttrain.models import (
    DCGANDiscriminator,
    DCGANGenerator,
    MLPDiscriminator,
    MLPGenerator,
)

ALL = [{"name": "all", "params": ["*"]}]


def networks(dcgan=False):
    torch.manual_seed(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    if dcgan:  # BatchNorm in both: G's statistics must move once per step, D's never while idle
        G, D = DCGANGenerator(latent_dim=8, image_size=8, channels=2, base_width=4), \
            DCGANDiscriminator(image_size=8, channels=2, base_width=4)
    else:
        G, D = MLPGenerator(hidden_dim=8, depth=1), MLPDiscriminator(hidden_dim=8, depth=1)
    return build_network("generator", G, ALL, adam), build_network("discriminator", D, ALL, adam)


def schedule(g, d, n_critic=1, r1=False, g_every=1):
    phases = [Phase("D", d, DiscriminatorLoss(losses.d_logistic), repeat=n_critic),
              Phase("G", g, GeneratorLoss(losses.g_nonsaturating), every=g_every)]
    if r1:
        phases.append(Phase("R1", d, R1Penalty(gamma=1.0), every=2, weight=2))
    return phases


class Images:
    batch_size = 8

    def __init__(self):
        self.gen = torch.Generator().manual_seed(1)

    def __iter__(self):
        return self

    def __next__(self):
        from alttrain.engine.batch import Batch

        return Batch(torch.rand(8, 2, 8, 8, generator=self.gen) * 2 - 1)

    def state_dict(self):
        return {}


def test_the_default_schedule_reuses_and_schedules_that_cannot_do_not():
    g, d = networks()
    assert [(p.producer, p.consumer, p.generator) for p in plan_reuse(schedule(g, d)).values()] == \
        [("D", "G", "generator")]
    assert plan_reuse(schedule(g, d, n_critic=5))  # the last of the 5 D updates shares with G
    assert plan_reuse(schedule(g, d, r1=True))  # a lazy R1 phase scores reals only: no matter
    assert plan_reuse(schedule(g, d), "auto") and not plan_reuse(schedule(g, d), False)
    assert not plan_reuse(schedule(g, d, g_every=2))  # G not every step: its D would make fakes for nothing
    with pytest.raises(ConfigError, match=r"trainer.reuse_fakes=true, but no D phase can share its fakes with a G "
                                          r"phase \(phase 'D': phase 'G' runs every 2 steps"):
        plan_reuse(schedule(g, d, g_every=2), True)
    with pytest.raises(ConfigError, match="trainer.reuse_fakes must be auto, true or false"):
        plan_reuse(schedule(g, d), "sometimes")


@pytest.mark.parametrize("n_critic", [1, 3])
def test_reused_fakes_keep_every_freezing_guarantee_under_the_audit(n_critic):
    g, d = networks(dcgan=True)
    trainer = Trainer([g, d], schedule(g, d, n_critic=n_critic, r1=True), Images(), max_steps=4, audit=True,
                      reuse_fakes=True)
    draws = []
    original = trainer.prior.latent
    trainer.prior.latent = lambda n, generator=None: draws.append(n) or original(n, generator)
    trainer.fit()  # the audit raises if D's update moved G (or G's update moved D), buffers included
    # One z per D update but the last, plus the step's shared one: n_critic z draws per step, not n_critic + 1.
    assert len(draws) == 4 * n_critic
    assert trainer.state.phase_updates == {"D": 4 * n_critic, "G": 4, "R1": 2}


class SeeingD(DiscriminatorLoss):
    """D's loss, keeping the fakes it scores."""

    def __call__(self, game, batch):
        self.seen = game.fake(self.generator, batch.samples.shape[0], detach=True)[0]
        return super().__call__(game, batch)


class SeeingG(GeneratorLoss):
    def __call__(self, game, batch):
        self.seen = game.fake(self.generator, game.batch_size)[0]
        return super().__call__(game, batch)


def test_the_g_update_backpropagates_through_the_very_fakes_d_scored():
    g, d = networks()
    d_term, g_term = SeeingD(losses.d_logistic), SeeingG(losses.g_nonsaturating)
    phases = [Phase("D", d, d_term), Phase("G", g, g_term)]
    draws = []
    trainer = Trainer([g, d], phases, ring8(batch_size=8).stream(seed=0), max_steps=1, reuse_fakes=True)
    original = trainer.prior.latent
    trainer.prior.latent = lambda n, generator=None: draws.append(n) or original(n, generator)
    trainer.fit()
    assert torch.equal(d_term.seen, g_term.seen.detach())  # the same samples
    assert d_term.seen.grad_fn is None and g_term.seen.grad_fn is not None  # detached for D, G's graph for G
    assert draws == [8]  # one z for the step
