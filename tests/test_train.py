"""Real runs through the same entry the CLI uses: Hydra compose -> alttrain.run.app.train."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import RING8, ROOT, SCRIPTS, compose_config, env_with_pythonpath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from alttrain.persist.checkpoint import load_checkpoint
from alttrain.run.app import train

TINY = ("debug=default", "trainer.max_steps=6", "trainer.log_every=3", "trainer.sample_every=3",
        "trainer.checkpoint_every=3", "metrics.num_samples=200", "trainer.audit=true", "trainer.progress=never")


def run(tmp_path, *overrides):
    cfg = compose_config(*TINY, *overrides)
    metrics = train(cfg, tmp_path, overrides)
    return cfg, metrics


def events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.parametrize("loss", ["ns", "hinge", "wgan_gp", "lsgan"])
def test_each_loss_trains_on_ring8_with_the_audit_on(tmp_path, loss):
    cfg, metrics = run(tmp_path, *RING8, f"loss={loss}")
    assert set(metrics) == {"modes", "high_quality", "reverse_kl", "mode_score", "precision", "recall", "density",
                            "coverage"}
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["step"] == 6 and ckpt["trainer"]["phase_updates"] == {"D": 6, "G": 6}


@pytest.mark.parametrize("experiment", ["ring8", "grid25", "digits"])
def test_each_data_set_writes_a_complete_run_dir(tmp_path, experiment):
    run(tmp_path, f"experiment={experiment}")
    for path in (".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/last.pt", "checkpoints/step_00000003.pt",
                 "samples/step_00000003.png", "metrics.json"):
        assert (tmp_path / path).is_file(), path
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["step"] == 6
    if experiment == "digits":
        assert {"fid", "kid", "class_entropy"} <= set(metrics)
    acc = events(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    expected = {"loss/D", "loss/G", "score/real", "score/fake", "grad_norm/generator/all",
                "grad_norm/discriminator/all", "lr/generator/all", "lr/discriminator/all", "time/steps_per_sec"}
    assert expected <= scalars, expected - scalars
    assert [e.step for e in acc.Scalars("loss/D")] == [0, 3]
    assert "samples" in acc.Tags()["images"]


def test_n_critic_and_a_lazy_r1_phase_from_the_command_line(tmp_path):
    run(tmp_path, *RING8, "trainer.n_critic=3",
        "+trainer.phases.R1={network: discriminator, loss: r1, every: 4, weight: 4}")
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ckpt["trainer"]["phase_updates"] == {"D": 18, "G": 6, "R1": 2}  # steps 0..5; R1 at 0 and 4


def test_param_groups_with_their_own_learning_rates(tmp_path):
    groups = "[{name: body, params: ['body.*']}, {name: head, params: ['head.*'], lr: 1.0e-5}]"
    run(tmp_path, *RING8, f"optim.discriminator.param_groups={groups}")
    acc = events(tmp_path)
    assert acc.Scalars("lr/discriminator/head")[0].value == pytest.approx(1e-5)
    assert acc.Scalars("lr/discriminator/body")[0].value == pytest.approx(1e-3)
    assert "grad_norm/discriminator/head" in acc.Tags()["scalars"]


def test_train_script_runs_as_a_subprocess(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *RING8, *TINY,
                           f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "checkpoints" / "last.pt").is_file() and (out / "metrics.json").is_file()


def test_a_multirun_sweep_makes_one_run_dir_per_job(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), "-m", *RING8, "loss=ns,hinge",
                           "seed=0,1", *TINY, f"hydra.sweep.dir={tmp_path}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p.name for p in tmp_path.iterdir() if (p / "metrics.json").is_file())
    assert runs == ["0", "1", "2", "3"]


def test_a_user_model_outside_the_package_plugs_in_by_target(tmp_path):
    (tmp_path / "my_gan.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn

        class TinyGenerator(nn.Module):
            def __init__(self, latent_dim=3, width=16):
                super().__init__()
                self.latent_dim = latent_dim
                self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(), nn.Linear(width, 2))

            def forward(self, z):
                return self.net(z)

        class TinyCritic(nn.Module):
            def __init__(self, width=16):
                super().__init__()
                self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, 1))

            def forward(self, x):
                return self.net(x).squeeze(-1)
    '''))
    out = tmp_path / "run"
    env = env_with_pythonpath(tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *RING8, *TINY,
                           "~model.generator", "~model.discriminator",
                           "+model.generator={_target_: my_gan.TinyGenerator, width: 8}",
                           "+model.discriminator={_target_: my_gan.TinyCritic}",
                           "optim.generator.param_groups=[{name: all, params: ['net.*']}]",
                           f"hydra.run.dir={out}"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = load_checkpoint(out / "checkpoints" / "last.pt")["models"]["generator"]
    assert state["net.0.weight"].shape == (8, 3)


def test_sample_script_writes_a_tensor_and_a_png(tmp_path):
    run(tmp_path / "pts", *RING8)
    run(tmp_path / "img", "experiment=digits")
    for kind, out, shape in (("pts", "s.pt", (50, 2)), ("img", "s.png", None), ("img", "s2.pt", (12, 1, 32, 32))):
        n = shape[0] if shape else 16
        proc = subprocess.run([sys.executable, str(SCRIPTS / "sample.py"),
                               f"checkpoint={tmp_path / kind / 'checkpoints' / 'last.pt'}", f"num_samples={n}",
                               f"out={tmp_path / out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if shape:
            samples = torch.load(tmp_path / out, weights_only=True)
            assert samples.shape == shape and torch.isfinite(samples).all()
        else:
            assert (tmp_path / out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
