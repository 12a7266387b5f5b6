"""Freezing switched per phase, and the audit that proves the idle network did not move."""

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from alttrain.engine.audit import IdleAudit
from alttrain.engine.freeze import FreezePlan
from alttrain.engine.network import build_network
from alttrain.errors import FreezeViolation


class Net(nn.Module):
    """Tiny net with a BatchNorm (buffers) and two named blocks for group patterns."""

    def __init__(self, d_in=2, d_out=2):
        super().__init__()
        self.body = nn.Linear(d_in, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, d_out)

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.body(x))))


def make_pair(weight_decay=0.0, d_groups=None):
    torch.manual_seed(0)
    G, D = Net(2, 2), Net(2, 1)
    adam = functools.partial(torch.optim.Adam, lr=1e-2, betas=(0.5, 0.999), weight_decay=weight_decay)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, d_groups or [{"name": "all", "params": ["*"]}], adam)
    return g, d


def flags(net):
    return [p.requires_grad for p in net.module.parameters()]


def d_step(g, d, plan):
    with plan():
        d.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = g.module(torch.randn(16, 2))
        loss = F.softplus(-d.module(torch.randn(16, 2))).mean() + F.softplus(d.module(fake)).mean()
        loss.backward()
        d.optimizer.step()
        d.optimizer.zero_grad(set_to_none=True)


def test_only_the_active_network_is_trainable_inside_and_flags_come_back():
    g, d = make_pair()
    plan = FreezePlan([g, d], d)
    with plan():
        assert all(flags(d)) and not any(flags(g))
    assert all(flags(g)) and all(flags(d))


def test_flags_are_restored_when_the_body_raises():
    g, d = make_pair()
    plan = FreezePlan([g, d], g)
    with pytest.raises(RuntimeError, match="boom"):
        with plan():
            raise RuntimeError("boom")
    assert all(flags(g)) and all(flags(d))


def test_nesting_in_any_order_restores_each_level():
    # Lightning's single-slot toggle leaves D frozen when D is toggled before G is untoggled.
    g, d = make_pair()
    plan_g, plan_d = FreezePlan([g, d], g), FreezePlan([g, d], d)
    with plan_g():
        with plan_d():
            assert all(flags(d)) and not any(flags(g))
            with plan_g():
                assert all(flags(g)) and not any(flags(d))
            assert all(flags(d)) and not any(flags(g))
        assert all(flags(g)) and not any(flags(d))
    assert all(flags(g)) and all(flags(d))


def test_user_frozen_parameters_stay_frozen_through_every_plan():
    torch.manual_seed(0)
    G, D = Net(), Net(2, 1)
    D.body.weight.requires_grad_(False)  # TF's trainable=False
    adam = functools.partial(torch.optim.Adam, lr=1e-2)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, [{"name": "all", "params": ["*"]}], adam)
    assert "body.weight" not in d.groups[0].names
    for plan in (FreezePlan([g, d], d), FreezePlan([g, d], g)):
        with plan():
            assert D.body.weight.requires_grad is False
        assert D.body.weight.requires_grad is False


def test_inactive_and_frozen_groups_of_the_active_network_stay_off():
    groups = [{"name": "body", "params": ["body.*", "norm.*"]}, {"name": "head", "params": ["head.*"]}]
    g, d = make_pair(d_groups=groups)
    plan = FreezePlan([g, d], d, groups=["head"])
    with plan():
        assert d.module.head.weight.requires_grad and not d.module.body.weight.requires_grad
    torch.manual_seed(1)
    G, D = Net(), Net(2, 1)
    frozen = [{"name": "body", "params": ["body.*", "norm.*"], "frozen": True}, {"name": "head", "params": ["head.*"]}]
    d2 = build_network("discriminator", D, frozen, functools.partial(torch.optim.SGD, lr=0.1))
    g2 = build_network("generator", G, [{"name": "all", "params": ["*"]}], functools.partial(torch.optim.SGD, lr=0.1))
    with FreezePlan([g2, d2], d2)():
        assert not D.body.weight.requires_grad and D.head.weight.requires_grad
    assert not D.body.weight.requires_grad  # frozen: true is permanent


def test_gradients_flow_through_the_idle_discriminator_into_the_generator():
    g, d = make_pair()
    with FreezePlan([g, d], g)():
        F.softplus(-d.module(g.module(torch.randn(16, 2)))).mean().backward()
        assert all(p.grad is not None for p in g.module.parameters())
        assert all(p.grad is None for p in d.module.parameters())


def test_idle_batchnorm_statistics_are_unchanged_and_would_change_otherwise():
    g, d = make_pair()
    before = g.module.norm.running_mean.clone(), g.module.norm.num_batches_tracked.clone()
    d_step(g, d, FreezePlan([g, d], d))  # G runs forward in train mode to make fakes
    assert torch.equal(g.module.norm.running_mean, before[0])
    assert torch.equal(g.module.norm.num_batches_tracked, before[1])
    # The same forward outside a plan does move them: the test above can fail.
    g.module(torch.randn(16, 2))
    assert not torch.equal(g.module.norm.running_mean, before[0])


def test_the_plan_never_walks_named_parameters_again():
    g, d = make_pair()
    plan = FreezePlan([g, d], d)

    def boom(*a, **k):
        raise AssertionError("walked the module")

    for net in (g, d):
        net.module.named_parameters = boom
        net.module.parameters = boom
    with plan():
        pass


def test_audit_passes_a_correct_phase():
    g, d = make_pair(weight_decay=0.1)
    plan = FreezePlan([g, d], d)
    d_step(g, d, plan)  # gives D optimizer state
    audit = IdleAudit(plan, [g, d], "D")
    d_step(g, d, plan)
    audit.verify()


def _zero_grad_freezing_g_step(g, d):
    """The classic bug: D is 'frozen' by zeroing its gradients, then a shared step moves it anyway."""
    g.optimizer.zero_grad()
    d.optimizer.zero_grad()
    F.softplus(-d.module(g.module(torch.randn(16, 2)))).mean().backward()
    for p in d.module.parameters():
        p.grad.zero_()
    g.optimizer.step()
    d.optimizer.step()  # zero gradient, but Adam's momentum and weight decay still move the weights
    for net in (g, d):
        net.optimizer.zero_grad(set_to_none=True)  # even with no stale .grad left behind ...


def test_audit_catches_freezing_by_zeroing_gradients_under_adam_with_weight_decay():
    g, d = make_pair(weight_decay=0.1)
    plan_d, plan_g = FreezePlan([g, d], d), FreezePlan([g, d], g)
    d_step(g, d, plan_d)
    audit = IdleAudit(plan_g, [g, d], "G")
    _zero_grad_freezing_g_step(g, d)
    with pytest.raises(FreezeViolation, match=r"idle tensor discriminator\.\S+ changed in phase 'G'"):
        audit.verify()  # ... the weights moved


def test_audit_catches_a_stale_gradient_on_an_idle_parameter():
    g, d = make_pair()
    plan_g = FreezePlan([g, d], g)
    audit = IdleAudit(plan_g, [g, d], "G")
    d.module.head.bias.grad = torch.zeros_like(d.module.head.bias)
    with pytest.raises(FreezeViolation, match=r"discriminator\.head\.bias has a \.grad"):
        audit.verify()


def test_audit_catches_a_changed_idle_buffer_and_optimizer_state():
    g, d = make_pair()
    plan_d = FreezePlan([g, d], d)
    d_step(g, d, plan_d)
    audit = IdleAudit(FreezePlan([g, d], g), [g, d], "G")
    d.module.norm.running_var.add_(1.0)
    with pytest.raises(FreezeViolation, match=r"discriminator\.norm\.running_var \(buffer\)"):
        audit.verify()
    d.module.norm.running_var.sub_(1.0)
    audit = IdleAudit(FreezePlan([g, d], g), [g, d], "G")
    next(iter(d.optimizer.state.values()))["exp_avg"].add_(1.0)
    with pytest.raises(FreezeViolation, match="optimizer state 'exp_avg'"):
        audit.verify()
