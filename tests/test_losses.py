"""Loss values against hand-derived numbers, penalty gradients on discriminators with known input gradients."""

import math

import pytest
import torch

from alttrain.games import losses

LN2, LN3 = math.log(2.0), math.log(3.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=1e-12, atol=1e-12)


# --- logit losses --------------------------------------------------------------------------------

def test_d_logistic_hand_values():
    # softplus(-0) = ln 2, softplus(-ln 3) = ln(1 + 1/3) = ln(4/3)
    close(losses.d_logistic(t(0.0, LN3), t(-LN3)), 0.5 * (LN2 + math.log(4 / 3)) + math.log(4 / 3))
    close(losses.d_logistic(t(0.0), t(0.0)), 2 * LN2)


def test_g_nonsaturating_hand_values():
    close(losses.g_nonsaturating(t(0.0, LN3)), 0.5 * (LN2 + math.log(4 / 3)))
    close(losses.g_nonsaturating(t(-LN3)), math.log(4.0))  # softplus(ln 3) = ln 4


def test_logistic_gradients_push_real_up_and_fake_down():
    real, fake = t(0.0, 0.0).requires_grad_(True), t(0.0).requires_grad_(True)
    losses.d_logistic(real, fake).backward()
    close(real.grad, [-0.25, -0.25])  # d/dr softplus(-r)/2 = -σ(-r)/2 = -1/4 at 0
    close(fake.grad, [0.5])  # σ(0)
    fake_g = t(0.0).requires_grad_(True)
    losses.g_nonsaturating(fake_g).backward()
    close(fake_g.grad, [-0.5])


REAL, FAKE = t(2.0, 0.5, -1.0), t(-2.0, 0.0, 3.0)


def test_hinge_hand_values():
    # relu(1 - real) = [0, .5, 2] -> 5/6; relu(1 + fake) = [0, 1, 4] -> 5/3
    close(losses.d_hinge(REAL, FAKE), 5 / 6 + 5 / 3)
    close(losses.g_hinge(FAKE), -1 / 3)


def test_wasserstein_hand_values():
    close(losses.d_wasserstein(REAL, FAKE), 1 / 3 - 1 / 2)
    close(losses.g_wasserstein(FAKE), -1 / 3)


def test_lsgan_hand_values():
    # ½·mean([0, 4]) + ½·mean([0, 4]) = 1 + 1
    close(losses.d_lsgan(t(1.0, 3.0), t(0.0, 2.0)), 2.0)
    close(losses.g_lsgan(t(0.0, 2.0)), 0.5)  # ½·mean([1, 1])


LOGIT_LOSSES = [
    (losses.d_logistic, 2), (losses.g_nonsaturating, 1), (losses.d_hinge, 2), (losses.g_hinge, 1),
    (losses.d_wasserstein, 2), (losses.g_wasserstein, 1), (losses.d_lsgan, 2), (losses.g_lsgan, 1),
]


@pytest.mark.parametrize("fn,arity", LOGIT_LOSSES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_extreme_logits_give_finite_losses_and_gradients(fn, arity):
    inputs = [torch.tensor([1e4, -1e4], requires_grad=True) for _ in range(arity)]  # float32
    loss = fn(*inputs)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    for x in inputs:
        assert torch.isfinite(x.grad).all()


def test_logistic_extreme_values_are_exact():
    # log(sigmoid(-1e4)) is -inf in float32; softplus gives the exact answer 1e4 for that term.
    close(losses.d_logistic(torch.tensor([1e4, -1e4]), torch.tensor([-1e4])), 5000.0)
    close(losses.g_nonsaturating(torch.tensor([-1e4])), 1e4)


# --- penalties -----------------------------------------------------------------------------------

class Linear(torch.nn.Module):
    """D(x) = <x, w> over the flattened sample: ∇_x D = w everywhere."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x):
        return x.flatten(1) @ self.w


class Quadratic(torch.nn.Module):
    """D(x) = ½·c·‖x‖²: ∇_x D = c·x."""

    def __init__(self, c):
        super().__init__()
        self.c = torch.nn.Parameter(torch.tensor(c, dtype=torch.float64))

    def forward(self, x):
        return 0.5 * self.c * x.flatten(1).pow(2).sum(1)


W = [1.0, 2.0, 2.0, 4.0]  # ‖w‖ = 5


def images(batch, seed):
    return torch.randn(batch, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_gradient_penalty_on_linear_d_is_norm_minus_one_squared():
    d = Linear(W)
    gp = losses.gradient_penalty(d, images(3, 0), images(3, 1))
    close(gp, (5.0 - 1.0) ** 2)
    gp.backward()  # create_graph: the penalty trains D. d/dw (‖w‖ - 1)² = 2(‖w‖ - 1)·w/‖w‖
    close(d.w.grad, [2 * 4 / 5 * w for w in W])


def test_gradient_penalty_interpolates_per_sample_with_given_generator():
    real, fake = t(1.0, 0.0, 3.0, 0.0).view(2, 2), t(-1.0, 0.0, 0.0, 2.0).view(2, 2)
    alpha = torch.rand(2, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    mixed = alpha * real + (1 - alpha) * fake  # ∇ of ½‖x‖² is x itself
    expected = ((mixed.norm(dim=1) - 1) ** 2).mean()
    gp = losses.gradient_penalty(Quadratic(1.0), real, fake, generator=torch.Generator().manual_seed(7))
    close(gp, expected.item())
    assert alpha[0] != alpha[1]  # one α per sample, so the check above can tell them apart


def test_gradient_penalty_sends_no_gradient_to_fake_or_real_producers():
    p = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    q = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    losses.gradient_penalty(Quadratic(1.0), images(2, 0) * q, images(2, 1) * p).backward()
    assert p.grad is None and q.grad is None


def test_gradient_penalty_with_zero_input_gradient_is_finite():
    # ‖0‖ has no derivative; the penalty and D's gradient must still be finite (here exactly 1 and 0).
    d = Linear(W)
    relu_d = lambda x: d(torch.relu(x))
    gp = losses.gradient_penalty(relu_d, -images(2, 0).abs() - 1, -images(2, 1).abs() - 1)
    gp.backward()
    close(gp, 1.0)
    close(d.w.grad, [0.0] * 4)


def test_r1_on_linear_d_is_squared_weight_norm():
    d = Linear(W)
    r1 = losses.r1_penalty(d, images(4, 0))
    close(r1, 25.0)
    r1.backward()
    close(d.w.grad, [2 * w for w in W])  # d/dw ‖w‖² = 2w


def test_r1_on_quadratic_d_is_mean_squared_sample_norm():
    d = Quadratic(2.0)
    real = t(1.0, 2.0, 3.0, 4.0).view(2, 2)  # ‖x‖² = 5 and 25, mean 15
    r1 = losses.r1_penalty(d, real)
    close(r1, 2.0**2 * 15)  # ‖c·x‖² averaged
    r1.backward()
    close(d.c.grad, 2 * 2.0 * 15)  # d/dc c²·15
    assert real.grad is None


@pytest.mark.parametrize("penalty", ["gp", "r1"])
def test_penalties_work_with_frozen_d_and_under_no_grad(penalty):
    # Only input gradients are needed, so a D whose parameters are all frozen (or a caller in
    # no_grad, e.g. when logging) still gets the exact value.
    d = Linear(W)
    d.requires_grad_(False)
    run = {"gp": lambda: losses.gradient_penalty(d, images(2, 0), images(2, 1)),
           "r1": lambda: losses.r1_penalty(d, images(2, 0))}[penalty]
    expected = 16.0 if penalty == "gp" else 25.0
    close(run(), expected)
    with torch.no_grad():
        close(run(), expected)
    assert d.w.grad is None


# --- loss terms as the config builds them ---------------------------------------------------------

@pytest.mark.parametrize("loss, d_fn, g_fn", [("ns", losses.d_logistic, losses.g_nonsaturating),
                                              ("hinge", losses.d_hinge, losses.g_hinge),
                                              ("lsgan", losses.d_lsgan, losses.g_lsgan),
                                              ("wgan_gp", losses.d_wasserstein, losses.g_wasserstein)])
def test_config_built_loss_terms_call_plain_partials_of_the_loss_functions(loss, d_fn, g_fn):
    # Hydra's own _partial_ objects re-check a target policy on every call (hundreds of µs, each phase);
    # the builder must hand the trainer plain partials of exactly the configured functions.
    import functools

    from conftest import compose_config

    from alttrain.run.build import build_loss_terms

    terms = build_loss_terms(compose_config(f"loss={loss}").loss)
    assert type(terms["d"].fn) is functools.partial and terms["d"].fn.func is d_fn
    assert type(terms["g"].fn) is functools.partial and terms["g"].fn.func is g_fn
    real, fake = t(0.5, -1.0, 2.0), t(-0.25, 1.5, 0.0)
    assert torch.equal(terms["d"].fn(real, fake), d_fn(real, fake))
    assert torch.equal(terms["g"].fn(fake), g_fn(fake))
