"""A checkpoint never makes alttrain build a class that is not on the allow-list, at any depth."""

import subprocess
import sys

import pytest
from conftest import ROOT, SCRIPTS
from omegaconf import OmegaConf

from alttrain.errors import CheckpointError
from alttrain.persist.targets import check_targets, shipped_model_targets


def node(text: str):
    return OmegaConf.create(text)


def test_shipped_models_and_torch_layers_pass_at_any_depth():
    check_targets(node("{_target_: alttrain.models.dcgan.DCGANGenerator, act: {_target_: torch.nn.ReLU}, "
                       "layers: [{_target_: torch.nn.Linear, in_features: 2, out_features: 2}]}"), "meta.generator")
    assert "alttrain.models.MLPGenerator" in shipped_model_targets()
    assert "alttrain.models.mlp.MLPGenerator" in shipped_model_targets()


@pytest.mark.parametrize("target", [
    "builtins.open", "io.open", "os.makedirs", "os.system", "torch.save", "torch.nn.functional.relu",
    "alttrain.models.dcgan.torch.save",   # starts with alttrain.models. but is not a model
    "torch.nn.modules.module.torch.save", "my_gan.Generator",
])
def test_anything_else_is_refused_nested_or_in_a_list(target):
    for text in (f"{{_target_: {target}}}",
                 f"{{_target_: alttrain.models.MLPGenerator, hidden: {{_target_: {target}, _args_: [x, w]}}}}",
                 f"{{_target_: alttrain.models.MLPGenerator, _args_: [{{_target_: {target}}}]}}"):
        with pytest.raises(CheckpointError, match=f"names {target}, which is not one of alttrain's models"):
            check_targets(node(text), "meta.generator")


def test_allow_and_trust_top_widen_the_list_by_exact_names_only():
    top = node("{_target_: my_gan.Generator, inner: {_target_: my_gan.Block}}")
    with pytest.raises(CheckpointError, match=r"meta.generator.inner._target_ .* names my_gan.Block"):
        check_targets(top, "meta.generator", trust_top=True)  # the top-level class only
    check_targets(top, "meta.generator", allow=["my_gan.Generator", "my_gan.Block"])


def test_interpolations_in_a_stored_config_are_refused():
    with pytest.raises(CheckpointError, match=r"meta.generator.width in the checkpoint is an interpolation"):
        check_targets(node("{_target_: alttrain.models.MLPGenerator, width: '${oc.env:HOME}'}"), "meta.generator")


@pytest.fixture(scope="module")
def ring_checkpoint(tmp_path_factory):
    from conftest import RING8, compose_config

    from alttrain.run.app import train

    out = tmp_path_factory.mktemp("run")
    train(compose_config(*RING8, "debug=default", "trainer.max_steps=2", "trainer.progress=never",
                         "metrics.num_samples=16", "model.hidden_dim=8"), out)
    return out / "checkpoints" / "last.pt"


@pytest.mark.parametrize("evil", ["builtins.open", "io.open", "os.makedirs"])
def test_sample_script_refuses_a_nested_target_and_runs_nothing(tmp_path, ring_checkpoint, evil):
    from alttrain.persist.checkpoint import load_checkpoint, save_checkpoint

    payload = load_checkpoint(ring_checkpoint)
    victim = tmp_path / "created_by_the_checkpoint"
    stored = OmegaConf.create(payload["meta"]["generator"])
    stored.hidden_dim = OmegaConf.create({"_target_": evil, "_args_": [str(victim), "w"] if "open" in evil
                                          else [str(victim)]})
    payload["meta"]["generator"] = OmegaConf.to_yaml(stored)
    save_checkpoint(payload, tmp_path / "evil.pt")
    proc = subprocess.run([sys.executable, str(SCRIPTS / "sample.py"), f"checkpoint={tmp_path / 'evil.pt'}",
                           f"out={tmp_path / 's.pt'}", "trust_target=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: meta.generator.hidden_dim._target_ in the checkpoint names {evil}, which is not one of alttrain's "
        "models or a torch.nn layer, so it is not built; pass allow=<that name> (comma-separated for several) to "
        "build it, only for checkpoints you trust"]
    assert not victim.exists() and not (tmp_path / "s.pt").exists()
