"""Mixed precision: bf16 autocast on the CPU, float32 losses, one GradScaler per network in checkpoints."""

import functools

import pytest
import torch
from conftest import RING8, compose_config, payload_of
from torch import nn

from alttrain.data import ring8
from alttrain.engine.batch import Batch
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss
from alttrain.models import MLPDiscriminator, MLPGenerator
from alttrain.models.dcgan import DCGANDiscriminator, DCGANGenerator
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.persist.resume import restore_trainer
from alttrain.run.app import train
from alttrain.run.build import build_components
from alttrain.scale.precision import FloatOutput, Precision


def make_trainer(G, D, precision, stream, batch, d_loss=losses.d_logistic, max_steps=3):
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, [{"name": "all", "params": ["*"]}], adam)
    phases = [Phase("D", d, DiscriminatorLoss(d_loss)), Phase("G", g, GeneratorLoss(losses.g_nonsaturating))]
    return Trainer([g, d], phases, stream, max_steps=max_steps, batch_size=batch,
                   precision=precision, audit=True)


def test_bf16_runs_the_forward_in_bf16_but_losses_and_weights_in_float32():
    torch.manual_seed(0)
    G, D = MLPGenerator(hidden_dim=16, depth=1), MLPDiscriminator(hidden_dim=16, depth=1)
    hidden, logits = [], []
    D.body[0].register_forward_hook(lambda m, i, out: hidden.append(out.dtype))

    def d_loss(real_logits, fake_logits):
        logits.extend([real_logits.dtype, fake_logits.dtype])
        return losses.d_logistic(real_logits, fake_logits)

    trainer = make_trainer(G, D, Precision("bf16"), ring8(batch_size=32).stream(seed=0), 32, d_loss)
    trainer.fit()
    assert set(hidden) == {torch.bfloat16} and set(logits) == {torch.float32}
    for net in trainer.networks:
        assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in net.module.parameters())
        for state in net.optimizer.state.values():
            assert state["exp_avg"].dtype == torch.float32


def test_bf16_trains_a_dcgan_with_batchnorm_on_the_cpu():
    torch.manual_seed(0)
    G = DCGANGenerator(latent_dim=8, image_size=32, channels=1, base_width=8)
    D = DCGANDiscriminator(image_size=32, channels=1, base_width=8)
    stream = iter(lambda: Batch(torch.rand(8, 1, 32, 32) * 2 - 1), None)
    state = make_trainer(G, D, Precision("bf16"), stream, 8, max_steps=2).fit()
    assert state.phase_updates == {"D": 2, "G": 2}
    assert all(torch.isfinite(p).all() for p in list(G.parameters()) + list(D.parameters()))


def test_bf16_through_the_config_stores_its_mode(tmp_path):
    train(compose_config(*RING8, "debug=default", "trainer.max_steps=2", "metrics.num_samples=100",
                         "trainer.progress=never", "trainer.precision=bf16"), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["precision"] == {"mode": "bf16", "scalers": {}}


def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="trainer.precision=16 needs a CUDA device"):
        Precision("16", "cpu")
    with pytest.raises(ConfigError, match="trainer.precision=16 needs a CUDA device"):
        build_components(compose_config(*RING8, "trainer.precision=16", "device=cpu"))


def test_float32_outputs_wrapper_only_under_mixed_precision():
    D = MLPDiscriminator(hidden_dim=4, depth=1)
    assert Precision("32").float_outputs(D) is D
    wrapped = Precision("bf16").float_outputs(D)
    assert isinstance(wrapped, FloatOutput)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert D(torch.randn(3, 2)).dtype == torch.bfloat16 and wrapped(torch.randn(3, 2)).dtype == torch.float32


def test_float32_outputs_reach_every_tensor_of_a_tuple_and_leave_labels_alone():
    class TwoHeads(nn.Module):  # an auxiliary-classifier discriminator: (logit, class logits, labels back)
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 4)

        def forward(self, x):
            h = self.fc(x)
            return h[:, 0], h[:, 1:], torch.zeros(len(x), dtype=torch.int64)

    wrapped = Precision("bf16").float_outputs(TwoHeads())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logit, classes, labels = wrapped(torch.randn(3, 2))
    assert logit.dtype == classes.dtype == torch.float32 and labels.dtype == torch.int64


def cpu_fp16() -> Precision:
    """fp16 loss scaling on the CPU: the constructor refuses it for users, the logic is the same on CUDA."""
    precision = Precision("32", "cpu")
    precision.mode, precision.dtype = "16", torch.float16
    return precision


def overflow_once(real_logits, fake_logits):
    """D's loss, infinite on its first call only."""
    overflow_once.calls += 1
    scale = float("inf") if overflow_once.calls == 1 else 1.0
    return losses.d_logistic(real_logits, fake_logits) * scale


def test_each_network_has_its_own_grad_scaler_and_checkpoints_keep_them():
    torch.manual_seed(0)
    overflow_once.calls = 0
    G, D = MLPGenerator(hidden_dim=8, depth=1), MLPDiscriminator(hidden_dim=8, depth=1)
    d0 = [p.detach().clone() for p in D.parameters()]
    precision = cpu_fp16()
    trainer = make_trainer(G, D, precision, ring8(batch_size=16).stream(seed=0), 16, overflow_once, max_steps=1)
    trainer.fit()
    # D's inf gradients: its scaler skipped the step and backed off; G's scaler never saw them.
    assert precision.scalers["discriminator"].get_scale() == 2.0 ** 15
    assert precision.scalers["generator"].get_scale() == 2.0 ** 16
    assert all(torch.equal(a, b) for a, b in zip(d0, D.parameters()))
    state = payload_of(trainer)
    assert state["precision"]["scalers"]["discriminator"]["scale"] == 2.0 ** 15
    restored = cpu_fp16()
    fresh = make_trainer(MLPGenerator(hidden_dim=8, depth=1), MLPDiscriminator(hidden_dim=8, depth=1), restored,
                         ring8(batch_size=16).stream(seed=0), 16)
    restore_trainer(fresh, state)
    assert {k: s.get_scale() for k, s in restored.scalers.items()} == {"generator": 2.0 ** 16,
                                                                         "discriminator": 2.0 ** 15}


def test_a_run_resumed_without_loss_scaling_ignores_saved_scalers():
    precision = Precision("bf16")
    precision.load_state_dict({"mode": "16", "scalers": {"generator": torch.amp.GradScaler("cpu").state_dict()}})
    assert precision.scalers == {}
