"""torch.compile: each network compiles once per state in step 0 and never again; results match eager.

The tests use the ``aot_eager`` backend (the autograd capture of the real path, without code
generation, which takes minutes on two cores). ``ALTTRAIN_SLOW_TESTS=1`` also runs inductor.
"""

import functools
import os

import pytest
import torch
from conftest import RING8, compose_config
from torch._dynamo.testing import CompileCounterWithBackend

from alttrain.data import ring8
from alttrain.engine.network import build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer
from alttrain.errors import ConfigError
from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss, R1Penalty
from alttrain.models import MLPDiscriminator, MLPGenerator
from alttrain.persist.checkpoint import load_checkpoint
from alttrain.run.app import train
from alttrain.run.build import build_components
from alttrain.scale.compile import compile_backend, needs_double_backward


def make_trainer(backend, max_steps: int) -> Trainer:
    torch.manual_seed(0)
    G, D = MLPGenerator(hidden_dim=16, depth=2), MLPDiscriminator(hidden_dim=16, depth=2)
    adam = functools.partial(torch.optim.Adam, lr=1e-3, betas=(0.5, 0.999))
    g = build_network("generator", G, [{"name": "all", "params": ["*"]}], adam)
    d = build_network("discriminator", D, [{"name": "body", "params": ["body.*"]}, {"name": "head", "params": ["head.*"]}],
                      adam)
    phases = [Phase("D", d, DiscriminatorLoss(losses.d_logistic), repeat=2),
              Phase("G", g, GeneratorLoss(losses.g_nonsaturating)),
              Phase("R1", d, R1Penalty(gamma=1.0), every=2, weight=2),  # double backward: eager D
              Phase("Dhead", d, DiscriminatorLoss(losses.d_hinge), groups=("head",), every=3)]
    # audit: after every phase, whatever was idle is bit-identical (flags are flipped outside compiled code).
    return Trainer([g, d], phases, ring8(batch_size=32).stream(seed=0), max_steps=max_steps,
                   compile=backend, audit=True)


def weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for net in trainer.networks for p in net.module.parameters()]


def test_each_network_compiles_in_step_zero_never_again_and_matches_eager():
    eager = make_trainer(None, max_steps=8)
    eager.fit()  # before the next make_trainer reseeds: the latents come from the global RNG
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = make_trainer(counter, max_steps=8)
    compiled.train_step()
    # G: trained, and under no_grad making D's fakes. D: trained, and frozen scoring G's fakes.
    # The head-only D phase differs from D's only in which flags are set: a third D graph.
    assert counter.frame_count == 2 + 3
    compiled.fit()  # steps 1..7: n_critic, R1 at 2, 4, 6, the head phase at 3 and 6
    assert compiled.state.step == 8 and counter.frame_count == 5
    # aot_eager runs the captured graph with eager kernels: bit-identical (inductor fuses: close).
    assert all(torch.equal(a, b) for a, b in zip(weights(eager), weights(compiled)))


def test_compile_through_the_config_keeps_plain_state_dict_keys(tmp_path):
    torch._dynamo.reset()
    train(compose_config(*RING8, "debug=default", "trainer.max_steps=2", "metrics.num_samples=100",
                         "trainer.progress=never", "model.hidden_dim=16", "trainer.compile=aot_eager"), tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["step"] == 2
    assert set(ckpt["models"]["generator"]) == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias",
                                                "head.weight", "head.bias"}


def test_compile_setting_names_a_backend():
    assert compile_backend(False) is None and compile_backend(True) == "inductor"
    assert compile_backend("aot_eager") == "aot_eager"
    with pytest.raises(ConfigError, match="trainer.compile must be false, true"):
        build_components(compose_config(*RING8, "trainer.compile=fast"))


def test_penalty_terms_are_known_to_need_double_backward():
    assert needs_double_backward(R1Penalty()) and needs_double_backward(DiscriminatorLoss(losses.d_wasserstein, 10.0))
    assert not needs_double_backward(DiscriminatorLoss(losses.d_logistic))
    assert not needs_double_backward(GeneratorLoss(losses.g_nonsaturating))


@pytest.mark.skipif(os.environ.get("ALTTRAIN_SLOW_TESTS") != "1", reason="inductor compiles for minutes on 2 cores")
def test_inductor_matches_eager_without_recompiling():
    torch._dynamo.reset()
    eager = make_trainer(None, max_steps=4)
    eager.fit()
    compiled = make_trainer("inductor", max_steps=4)
    compiled.train_step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled.fit()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for a, b in zip(weights(eager), weights(compiled)):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_inductor_on_a_cpu_warns_with_the_measured_slowdown_and_debug_backends_do_not(caplog):
    from alttrain.scale.compile import warn_if_slower

    with caplog.at_level("WARNING", logger="alttrain"):
        warn_if_slower("aot_eager", torch.device("cpu"))
        warn_if_slower(None, torch.device("cpu"))
        warn_if_slower("inductor", torch.device("cuda"))
        assert not caplog.records
        warn_if_slower("inductor", torch.device("cpu"))
    (record,) = caplog.records
    assert record.getMessage().startswith("trainer.compile=true on a CPU was measured at 1.10x eager steps/s on "
                                          "DCGAN digits but 0.73x on the MLP GAN")


def _saved_dtypes(module: torch.nn.Module, *inputs: torch.Tensor) -> set[torch.dtype]:
    """Dtypes of what the compiled forward keeps for backward, partitioned and decomposed as inductor does."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table
    import torch._inductor.lowering  # noqa: F401  (max_pool2d's decomposition looks it up)

    saved: set[torch.dtype] = set()

    def forward_compiler(gm, example_inputs):
        (outputs,) = [node.args[0] for node in gm.graph.nodes if node.op == "output"]
        saved.update(o.meta["val"].dtype for o in outputs if isinstance(o, torch.fx.Node) and "val" in o.meta)
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, bw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                           partition_fn=min_cut_rematerialization_partition, decompositions=select_decomp_table())
    torch._dynamo.reset()
    out = torch.compile(module, backend=backend)(*inputs)
    sum(o.sum() for o in (out if isinstance(out, tuple) else (out,))).backward()  # ACGAN: (logit, classes)
    return saved


@pytest.mark.parametrize("name", ["mlp", "dcgan", "dcgan_sn", "dcgan_cond", "bigan"])
def test_shipped_networks_save_no_boolean_mask_for_backward(name):
    # Inductor's vectorised CPU kernels store a bool tensor through a generic path: 18-22x the eager
    # cost of the same store (README, "Compile"). In-place activations let the backward take the
    # sign from the saved output instead. (ResNet's discriminator still saves one, for the ReLU whose
    # output only the final sum reads: see alttrain/scale/compile.py.)
    from alttrain import models

    z2, x2 = torch.randn(8, 2, requires_grad=True), torch.randn(8, 2, requires_grad=True)
    z64, img = torch.randn(8, 64), torch.randn(8, 1, 32, 32, requires_grad=True)
    labels = torch.randint(0, 10, (8,))
    cases = {
        "mlp": [(models.MLPGenerator(), z2), (models.MLPDiscriminator(), x2),
                (models.MLPDiscriminator(negative_slope=0.0), x2)],
        "dcgan": [(models.DCGANGenerator(), z64), (models.DCGANGenerator(norm="none"), z64),
                  (models.DCGANDiscriminator(), img)],
        "dcgan_sn": [(models.DCGANDiscriminator(norm="spectral"), img)],
        "dcgan_cond": [(models.ConditionalDCGANGenerator(), z64, labels), (models.ACGANDiscriminator(), img),
                       (models.ProjectionDiscriminator(), img, labels)],
        "bigan": [(models.MLPEncoder(), x2), (models.JointMLPDiscriminator(), x2, z2)],
    }
    for module, *inputs in cases[name]:
        assert torch.bool not in _saved_dtypes(module, *inputs), type(module).__name__
