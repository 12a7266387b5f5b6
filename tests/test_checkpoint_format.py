"""The checkpoint contract: a top-level ``step``, ``models: {name: state_dict}``, a format version checked on load."""

import pytest
import torch
from conftest import RING8, compose_config

from alttrain.errors import CheckpointError
from alttrain.persist.checkpoint import load_checkpoint, save_checkpoint
from alttrain.persist.schema import FORMAT_VERSION, check_training_payload
from alttrain.run.app import train

RUN = (*RING8, "debug=default", "trainer.max_steps=3", "trainer.checkpoint_every=0", "trainer.progress=never",
       "metrics.num_samples=16", "model.hidden_dim=8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_config(*RUN), run_dir)
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_a_checkpoint_has_a_top_level_step_models_by_name_and_its_format(checkpoint):
    assert checkpoint["format"] == FORMAT_VERSION == 2
    assert type(checkpoint["step"]) is int and checkpoint["step"] == checkpoint["trainer"]["step"] == 3
    assert list(checkpoint["models"]) == ["generator", "discriminator"]
    for state in checkpoint["models"].values():
        assert all(isinstance(t, torch.Tensor) for t in state.values())
    assert check_training_payload(checkpoint, "last.pt") == 3


def damaged(checkpoint, **changes):
    payload = {**checkpoint, "trainer": dict(checkpoint["trainer"])}
    for key, value in changes.items():
        if key.startswith("trainer."):
            payload["trainer"][key.split(".", 1)[1]] = value
        else:
            payload[key] = value
    return payload


@pytest.mark.parametrize("changes, message", [
    ({"format": 99}, "has checkpoint format 99, which this alttrain cannot read (it reads 1, 2)"),
    ({"format": "2"}, "has checkpoint format '2', which this alttrain cannot read"),
    ({"step": -1, "trainer.step": -1}, "holds trainer step -1, not an integer >= 0"),
    ({"step": 5}, "says step 5 at the top and 3 in 'trainer'"),
    ({"trainer.samples": -64}, "holds a sample count of -64, not an integer >= 0"),
    ({"trainer.phase_updates": {"D": -1, "G": 3}}, "holds -1 updates for phase 'D'"),
])
def test_damaged_counters_and_unknown_versions_are_refused_in_one_line(checkpoint, changes, message):
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_training_payload(damaged(checkpoint, **changes), "last.pt")


def test_a_format_1_checkpoint_without_a_top_level_step_still_loads(checkpoint):
    old = {k: v for k, v in checkpoint.items() if k not in ("format", "step")}
    assert check_training_payload({**old, "format": 1}, "old.pt") == 3
    assert check_training_payload(old, "old.pt") == 3  # 0.1 wrote format 1; files without it are read as 1


@pytest.mark.parametrize("root", ["models", "ema", "optimizers"])
def test_non_finite_weights_moments_or_ema_are_refused_on_load_naming_the_tensor(checkpoint, root, tmp_path):
    payload = damaged(checkpoint)
    if root == "ema":
        payload["ema"] = {"model": {k: v.clone() for k, v in checkpoint["models"]["generator"].items()}, "samples": 1}
        payload["ema"]["model"]["head.bias"][0] = float("inf")
        where = "ema.model.head.bias"
    elif root == "models":
        payload["models"] = {n: {k: v.clone() for k, v in s.items()} for n, s in checkpoint["models"].items()}
        payload["models"]["discriminator"]["body.0.weight"][0, 0] = float("nan")
        where = "models.discriminator.body.0.weight"
    else:
        state = checkpoint["optimizers"]["generator"]
        moments = {i: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for i, s in state["state"].items()}
        moments[0]["exp_avg_sq"].view(-1)[0] = float("nan")
        payload["optimizers"] = {**checkpoint["optimizers"], "generator": {**state, "state": moments}}
        where = "optimizers.generator.state.0.exp_avg_sq"
    with pytest.raises(CheckpointError, match=f"holds NaN or Inf in '{where}'"):
        check_training_payload(payload, "last.pt")


def test_a_tensor_of_another_dtype_is_named_on_load(checkpoint):
    from alttrain.models import MLPGenerator
    from alttrain.persist.checkpoint import load_into

    state = {k: v.double() if k == "head.weight" else v for k, v in checkpoint["models"]["generator"].items()}
    with pytest.raises(CheckpointError, match="tensor 'head.weight' has dtype torch.float64 in the checkpoint but "
                                              "torch.float32 in the model"):
        load_into(MLPGenerator(hidden_dim=8), state, "generator")


def test_saving_refuses_non_finite_weights_so_no_file_holds_them(checkpoint, tmp_path):
    from alttrain.errors import NonFiniteError

    payload = damaged(checkpoint)
    payload["models"] = {"generator": {"w": torch.tensor([float("nan")])}}
    with pytest.raises(NonFiniteError):
        save_checkpoint(payload, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
