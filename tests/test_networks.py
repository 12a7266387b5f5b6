"""Any number of networks: a phase trains several, every other one is idle and proven unchanged."""

import functools

import pytest
import torch
from torch import nn

from alttrain.engine.audit import IdleAudit
from alttrain.engine.batch import Batch, LatentPrior
from alttrain.engine.freeze import FreezePlan
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError, FreezeViolation

ALL = [{"name": "all", "params": ["*"]}]


class Block(nn.Module):
    """A linear layer and a BatchNorm: parameters and buffers, both of which must stay put when idle."""

    def __init__(self, d_in=2, d_out=2):
        super().__init__()
        self.fc = nn.Linear(d_in, 4)
        self.norm = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, d_out)

    def forward(self, x):
        return self.out(torch.relu(self.norm(self.fc(x))))


class Chain:
    """A loss that runs every network forward in a chain: a -> b -> c -> d -> e, so idle ones run too."""

    needs_real = True

    def __init__(self, names):
        self.names = names

    def __call__(self, game, batch):
        h = batch.samples
        for name in self.names:
            h = game.run(name, h)
        return h.pow(2).mean(), {}


def five_networks(weight_decay=0.1):
    torch.manual_seed(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-2, weight_decay=weight_decay)
    return [build_network(name, Block(), ALL, adam) for name in "abcde"]


class Points:
    batch_size = 16

    def __init__(self):
        self.gen = torch.Generator().manual_seed(1)

    def __iter__(self):
        return self

    def __next__(self):
        return Batch(torch.randn(16, 2, generator=self.gen))

    def state_dict(self):
        return {}


def snapshot(net):
    return {k: v.detach().clone() for k, v in net.module.state_dict().items()}


def test_a_phase_trains_two_networks_and_three_idle_ones_stay_bit_identical():
    nets = five_networks()
    a, b, c, d, e = nets
    chain = Chain("abcde")
    # The idle ones get optimizer state first (their own phase), so the audit has moments to compare too.
    phases = [Phase("CDE", [c, d, e], chain), Phase("AB", [a, b], chain)]
    trainer = Trainer(nets, phases, Points(), max_steps=1, audit=True, batch_size=16)
    trainer._update(phases[0], 0)
    before = {n.name: snapshot(n) for n in nets}
    moments = {n.name: [s["exp_avg"].clone() for s in n.optimizer.state.values()] for n in (c, d, e)}
    trainer._update(phases[1], 0)  # the audit raises if anything idle moved
    for net in (c, d, e):
        after = snapshot(net)
        assert all(torch.equal(before[net.name][k], after[k]) for k in after), net.name  # BatchNorm stats too
        assert [s["exp_avg"] for s in net.optimizer.state.values()] != []
        assert all(torch.equal(x, s["exp_avg"]) for x, s in zip(moments[net.name], net.optimizer.state.values()))
        assert all(p.grad is None and p.requires_grad for p in net.module.parameters())
    for net in (a, b):  # each trained network stepped its own optimizer
        assert not torch.equal(before[net.name]["fc.weight"], net.module.fc.weight)
        assert len(net.optimizer.state) == len(list(net.module.parameters()))
        assert not torch.equal(before[net.name]["norm.running_mean"], net.module.norm.running_mean)


def test_the_audit_catches_an_idle_network_moved_behind_the_freeze():
    nets = five_networks()
    plan = FreezePlan(nets, nets[:2])
    audit = IdleAudit(plan, nets, "AB")
    with plan():
        assert all(p.requires_grad for n in nets[:2] for p in n.module.parameters())
        assert not any(p.requires_grad for n in nets[2:] for p in n.module.parameters())
        with torch.no_grad():
            nets[4].module.norm.running_var.add_(1.0)  # a buffer of idle e: put back when the plan ends
            nets[3].module.out.bias.add_(1.0)  # a weight of idle d, moved by hand: nothing puts it back
    assert torch.equal(nets[4].module.norm.running_var, torch.ones(4))
    with pytest.raises(FreezeViolation, match=r"idle tensor d.out.bias changed in phase 'AB'"):
        audit.verify()


def test_groups_per_network_in_a_joint_phase():
    torch.manual_seed(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    groups = [{"name": "fc", "params": ["fc.*"]}, {"name": "rest", "params": ["norm.*", "out.*"]}]
    a, b = build_network("a", Block(), groups, adam), build_network("b", Block(), groups, adam)
    plan = FreezePlan([a, b], [a, b], {"a": ["fc"], "b": None})
    with plan():
        assert [p.requires_grad for p in a.module.parameters()] == [True, True, False, False, False, False]
        assert all(p.requires_grad for p in b.module.parameters())
    with pytest.raises(ConfigError, match="give its groups per network"):
        Phase("AB", [a, b], Chain("ab"), groups=["fc"])
    with pytest.raises(ConfigError, match="groups names network 'c', which this phase does not train"):
        Phase("AB", [a, b], Chain("ab"), groups={"c": ["fc"]})


def test_a_module_shared_by_two_networks_is_refused_naming_both():
    torch.manual_seed(0)
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    shared = nn.Linear(2, 2)
    a = build_network("a", nn.Sequential(shared, nn.ReLU()), ALL, adam)
    b = build_network("b", nn.Sequential(nn.Linear(2, 2), shared), ALL, adam)
    phases = [Phase("A", a, Chain("a")), Phase("B", b, Chain("b"))]
    with pytest.raises(ConfigError, match=r"parameter '1.weight' of network 'b' is also parameter '0.weight' of "
                                          r"network 'a': a parameter may belong to one network only"):
        Trainer([a, b], phases, Points(), max_steps=1)


def test_a_phase_training_a_network_the_trainer_does_not_have_is_refused():
    a, b, c = five_networks()[:3]
    phases = [Phase("A", a, Chain("a")), Phase("B", b, Chain("b")), Phase("C", c, Chain("c"))]
    with pytest.raises(ConfigError, match=r"phase 'C' trains 'c', which is not one of the trainer's networks \(a, b\)"):
        Trainer([a, b], phases, Points(), max_steps=1)


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf")])
def test_a_phase_weight_must_be_a_finite_positive_number(weight):
    a = five_networks()[0]
    with pytest.raises(ConfigError, match="trainer.phases.A.weight must be a finite number > 0"):
        Phase("A", a, Chain("a"), weight=weight)


def test_the_latent_prior_draws_z_then_labels_and_keeps_unconditional_draws_unchanged():
    torch.manual_seed(3)
    expected = torch.randn(5, 7)
    torch.manual_seed(3)
    z, labels = LatentPrior((7,)).sample(5)
    assert torch.equal(z, expected) and labels is None
    torch.manual_seed(3)
    z, labels = LatentPrior((7, 1, 1), num_classes=4).sample(5)
    assert torch.equal(z.reshape(5, 7), expected) and labels.shape == (5,) and labels.dtype == torch.int64
    # The data's class frequencies: a class with probability 0 is never drawn.
    prior = LatentPrior((2,), num_classes=3, class_probs=torch.tensor([0.5, 0.0, 0.5]))
    assert set(prior.labels(500).tolist()) == {0, 2}
