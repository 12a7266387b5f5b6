"""The phase loop: what a step counts, schedules, non-finite handling, and the idle network untouched."""

import functools

import pytest
import torch
from torch import nn

from alttrain.data import ring8
from alttrain.engine.batch import Batch
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError, NonFiniteError
from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss, R1Penalty
from alttrain.models import MLPDiscriminator, MLPGenerator


class Recorder:
    """A loss term wrapper that records the order of phase executions."""

    def __init__(self, term, log, name):
        self.term, self.log, self.name, self.needs_real = term, log, name, term.needs_real

    def __call__(self, game, batch):
        self.log.append(self.name)
        return self.term(game, batch)


def setup(n_critic=1, r1_every=None, audit=True, d_loss=losses.d_logistic, on_nan="raise", max_steps=10,
          nan_check_every=50, g_loss=losses.g_nonsaturating):
    torch.manual_seed(0)
    G, D = MLPGenerator(hidden_dim=16, depth=1), MLPDiscriminator(hidden_dim=16, depth=1)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999), weight_decay=0.01)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, [{"name": "all", "params": ["*"]}], adam)
    log = []
    phases = [Phase("D", d, Recorder(DiscriminatorLoss(d_loss), log, "D"), repeat=n_critic),
              Phase("G", g, Recorder(GeneratorLoss(g_loss), log, "G"))]
    if r1_every:
        phases.append(Phase("R1", d, Recorder(R1Penalty(gamma=1.0), log, "R1"), every=r1_every, weight=r1_every))
    data = ring8(batch_size=32)
    trainer = Trainer([g, d], phases, data.stream(seed=0),
                      max_steps=max_steps, audit=audit, on_nan=on_nan, nan_check_every=nan_check_every)
    return trainer, log


def test_a_step_is_one_pass_of_the_schedule_with_n_critic_and_every():
    trainer, log = setup(n_critic=3, r1_every=4)
    state = trainer.fit()
    assert state.step == 10
    # steps 0..9: D 3 times each step, G once, R1 at steps 0, 4, 8
    assert state.phase_updates == {"D": 30, "G": 10, "R1": 3}
    assert log[:5] == ["D", "D", "D", "G", "R1"] and log[5:9] == ["D", "D", "D", "G"]
    assert [p.updates_in(10) for p in trainer.phases] == [30, 10, 3]
    # real samples: D draws a batch per update, R1 too, G none
    assert state.samples == 32 * (30 + 3)


def test_audit_runs_every_phase_without_violation():
    trainer, _ = setup(n_critic=2, r1_every=2)
    trainer.fit()  # the audit raises FreezeViolation if anything idle moved


def test_d_phase_moves_only_d_and_g_phase_moves_only_g():
    trainer, _ = setup(audit=False)
    g, d = trainer.networks
    g0 = [p.detach().clone() for p in g.module.parameters()]
    d0 = [p.detach().clone() for p in d.module.parameters()]
    trainer._update(trainer.phases[0], 0)  # D
    assert all(torch.equal(a, b) for a, b in zip(g0, g.module.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(d0, d.module.parameters()))
    d1 = [p.detach().clone() for p in d.module.parameters()]
    trainer._update(trainer.phases[1], 0)  # G
    assert all(torch.equal(a, b) for a, b in zip(d1, d.module.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(g0, g.module.parameters()))


def nan_loss(real_logits, fake_logits):
    return losses.d_logistic(real_logits, fake_logits) * float("nan")


def test_nan_check_every_update_raises_before_the_optimizer_step():
    trainer, _ = setup(d_loss=nan_loss, audit=False, nan_check_every=1)
    d = trainer.networks[1]
    before = [p.detach().clone() for p in d.module.parameters()]
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan in phase 'D' at step 0"):
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, d.module.parameters()))
    assert trainer.state.step == 0 and trainer.state.phase_updates == {"D": 0, "G": 0}


def nan_from_step(first: int):
    calls = iter(range(10**6))

    def d_loss(real_logits, fake_logits):
        loss = losses.d_logistic(real_logits, fake_logits)
        return loss * float("nan") if next(calls) >= first else loss
    return d_loss


def test_deferred_check_names_the_first_bad_update_at_the_next_check_step():
    # D's loss is NaN from step 3 on; the check every 4 steps finds it after step 4 (steps 0-3) and
    # names step 3, not a later one.
    trainer, _ = setup(d_loss=nan_from_step(3), audit=False, nan_check_every=4)
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan in phase 'D' at step 3 \(the first since step 0;"):
        trainer.fit()
    assert trainer.state.step == 4  # it ran on to the check: no host sync in between


def test_deferred_check_runs_at_the_end_of_fit_and_on_demand():
    trainer, _ = setup(d_loss=nan_from_step(2), audit=False, nan_check_every=50, max_steps=3)
    with pytest.raises(NonFiniteError, match=r"phase 'D' at step 2 \("):
        trainer.fit()  # 3 steps < 50: found by the check at the end, before on_train_end
    trainer, _ = setup(audit=False, nan_check_every=50, max_steps=2)
    trainer.fit()
    trainer.verify_finite()  # nothing recorded since the last check: passes without a sync
    assert trainer.guard.unchecked == []


def nan_grad_at_call(bad: int, loss_fn=losses.g_nonsaturating):
    """A loss, finite everywhere, whose gradient is NaN on call ``bad``: d sqrt(|x|)/dx at 0 is inf * 0."""
    calls = iter(range(10**6))

    def poisoned(*logits):
        loss = loss_fn(*logits)
        if next(calls) == bad:
            loss = loss + (logits[-1] - logits[-1].detach()).abs().sqrt().sum()
        return loss
    return poisoned


def test_a_non_finite_gradient_behind_a_finite_loss_is_found_in_the_weights():
    # G's gradient is NaN at step 7, its last update before the check: only G's weights show it.
    trainer, _ = setup(g_loss=nan_grad_at_call(7), audit=False, nan_check_every=4)
    with pytest.raises(NonFiniteError, match=r"non-finite weights of 'generator' after steps 4-7, whose losses "
                                             r"were finite .*nan_check_every=1 stops at the exact update"):
        trainer.fit()
    assert trainer.state.step == 8
    # At step 5 it makes D's next loss (step 6) non-finite, which is named, with the hint.
    trainer, _ = setup(g_loss=nan_grad_at_call(5), audit=False, nan_check_every=4)
    with pytest.raises(NonFiniteError, match=r"non-finite loss nan in phase 'D' at step 6 \(the first since step 4; "
                                             r"trainer.nan_check_every=1 checks each gradient too\)"):
        trainer.fit()
    # Checked every update: the exact update is named and stopped before its optimizer step.
    trainer, _ = setup(g_loss=nan_grad_at_call(5), audit=False, nan_check_every=1)
    g = trainer.networks[0]
    with pytest.raises(NonFiniteError, match=r"non-finite gradient \(norm nan\) in phase 'G' at step 5;"):
        trainer.fit()
    assert all(torch.isfinite(p).all() for p in g.module.parameters())
    assert trainer.state.step == 5 and trainer.state.phase_updates == {"D": 6, "G": 5}


def test_nan_check_every_must_be_a_positive_integer():
    trainer, _ = setup()
    with pytest.raises(ConfigError, match="trainer.nan_check_every must be an integer >= 1, got 0"):
        Trainer(trainer.networks, trainer.phases, trainer.stream, max_steps=1, nan_check_every=0)


def test_nan_skip_discards_the_update_counts_it_and_goes_on():
    trainer, _ = setup(d_loss=nan_loss, audit=False, on_nan="skip", max_steps=4)
    d = trainer.networks[1]
    before = [p.detach().clone() for p in d.module.parameters()]
    state = trainer.fit()
    assert state.skipped == {"D": 4, "G": 0} and state.phase_updates == {"D": 0, "G": 4}
    assert all(torch.equal(a, b) for a, b in zip(before, d.module.parameters()))
    assert all(p.grad is None for p in d.module.parameters())


def test_a_schedule_that_never_trains_a_network_is_refused():
    trainer, _ = setup()
    g, d = trainer.networks
    with pytest.raises(ConfigError, match="no phase trains 'generator'"):
        Trainer([g, d], [trainer.phases[0]], trainer.stream, max_steps=1)
    with pytest.raises(ConfigError, match="repeat must be an integer >= 1"):
        Phase("D", d, trainer.phases[0].loss, repeat=0)


def test_accumulation_sums_micro_batch_gradients_into_one_update():
    """accumulate=k with batch b equals one update on the k*b batch (mean loss), exactly as SGD sees it."""
    torch.manual_seed(0)
    D = nn.Linear(2, 1, bias=False)
    G = MLPGenerator(hidden_dim=4, depth=1)
    sgd = functools.partial(torch.optim.SGD, lr=0.5)
    d = build_network("discriminator", nn.Sequential(D, nn.Flatten(0)), [{"name": "all", "params": ["*"]}], sgd)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], sgd)

    class RealOnly:
        needs_real = True

        def __call__(self, game, batch):
            return game.score("discriminator", batch.samples).pow(2).mean(), {}

    batches = [Batch(torch.randn(4, 2)) for _ in range(3)]
    w0 = D.weight.detach().clone()
    phases = [Phase("D", d, RealOnly(), accumulate=3), Phase("G", g, GeneratorLoss(losses.g_nonsaturating), every=99)]
    Trainer([g, d], phases, iter(batches), max_steps=1, batch_size=4).fit()
    x = torch.cat([b.samples for b in batches])
    expected = w0 - 0.5 * (2 * (x @ w0.T) * x).mean(0, keepdim=True)  # grad of mean (x.w)^2
    assert torch.allclose(D.weight, expected, atol=1e-6)
