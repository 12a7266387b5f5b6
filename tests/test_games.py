"""Games beyond one G and one D, through the command line: conditional GANs, BiGAN's three networks,
models written for a plain loop, and the clear errors for models that cannot play."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ROOT, SCRIPTS, env_with_pythonpath
from PIL import Image

from alttrain.persist.checkpoint import load_checkpoint

QUICK = ("debug=default", "trainer.max_steps=4", "trainer.checkpoint_every=2", "trainer.sample_every=2",
         "trainer.log_every=2", "metrics.num_samples=64", "trainer.progress=never")

# Models as pytorch/examples' dcgan/main.py writes them: z of shape (N, nz, 1, 1), D ending in (N, 1, 1, 1)
# logits (here without its final Sigmoid), no latent_dim attribute, plus models that cannot play.
USER_MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    class ExamplesGenerator(nn.Module):
        def __init__(self, nz=16, ngf=8):
            super().__init__()
            self.main = nn.Sequential(
                nn.ConvTranspose2d(nz, ngf * 2, 4, 1, 0, bias=False), nn.BatchNorm2d(ngf * 2), nn.ReLU(True),
                nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False), nn.BatchNorm2d(ngf), nn.ReLU(True),
                nn.ConvTranspose2d(ngf, 1, 4, 2, 1, bias=False), nn.Tanh())

        def forward(self, input):
            return self.main(input)

    class ExamplesDiscriminator(nn.Module):
        def __init__(self, ndf=8, sigmoid=False):
            super().__init__()
            layers = [nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                      nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
                      nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(ndf * 2, 1, 4, 1, 0, bias=False)]
            self.main = nn.Sequential(*layers, *([nn.Sigmoid()] if sigmoid else []))

        def forward(self, input):
            return self.main(input)   # (N, 1, 1, 1)

    class NeedsY(nn.Module):
        """A conditional generator whose label argument is not called labels."""
        latent_dim = 16

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 256)

        def forward(self, z, y):
            return self.fc(z).view(-1, 1, 16, 16)

    class FiveLogits(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(256, 5)

        def forward(self, x):
            return self.fc(x.flatten(1))
''')


@pytest.fixture
def user_models(tmp_path):
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    return env_with_pythonpath(tmp_path, OMP_NUM_THREADS="1")


def train_cli(run_dir, *args, env=None):
    return subprocess.run([sys.executable, str(SCRIPTS / "train.py"), *QUICK, *args, f"hydra.run.dir={run_dir}"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def error_line(proc):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return errors[0]


EXAMPLES_PAIR = ("data.image_size=16", "~model.generator", "~model.discriminator",
                 "+model.generator={_target_: user_models.ExamplesGenerator}",
                 "+model.discriminator={_target_: user_models.ExamplesDiscriminator}")


def test_a_pytorch_examples_model_pair_trains_by_target_with_a_latent_shape(tmp_path, user_models):
    proc = train_cli(tmp_path / "run", *EXAMPLES_PAIR, "+model.latent_shape=[16,1,1]", env=user_models)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 4 and ckpt["meta"]["latent_shape"] == [16, 1, 1]
    assert ckpt["models"]["generator"]["main.0.weight"].shape == (16, 16, 4, 4)
    sample = subprocess.run([sys.executable, str(SCRIPTS / "sample.py"), f"checkpoint={tmp_path / 'run'}",
                             "num_samples=5", f"out={tmp_path / 's.pt'}", "allow=user_models.ExamplesGenerator"],
                            cwd=ROOT, capture_output=True, text=True, env=user_models, timeout=120)
    assert sample.returncode == 0, sample.stderr
    assert torch.load(tmp_path / "s.pt", weights_only=True).shape == (5, 1, 16, 16)


def test_z_for_a_generator_without_latent_dim_is_asked_for_and_a_wrong_shape_named(tmp_path, user_models):
    line = error_line(train_cli(tmp_path / "a", *EXAMPLES_PAIR, env=user_models))
    assert "no network has a latent_dim attribute; set model.latent_shape" in line, line
    line = error_line(train_cli(tmp_path / "b", *EXAMPLES_PAIR, "+model.latent_shape=[16]", env=user_models))
    for fragment in ("phase 'D' (loss.d): model.generator (user_models.ExamplesGenerator) failed on z of shape (8, 16)",
                     "A generator takes z of shape (N, *latent_shape)", "e.g. [100, 1, 1]"):
        assert fragment in line, line


def test_a_discriminator_ending_in_a_sigmoid_is_warned_about(tmp_path, user_models):
    proc = train_cli(tmp_path / "run", *EXAMPLES_PAIR, "+model.latent_shape=[16,1,1]",
                     "+model.discriminator.sigmoid=true", env=user_models)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("model.discriminator (user_models.ExamplesDiscriminator) ends in a Sigmoid (its output's last operation "
            "on the shape probe): remove it") in proc.stdout + proc.stderr


@pytest.mark.parametrize("generator, discriminator, fragments", [
    ("user_models.NeedsY", "alttrain.models.dcgan.DCGANDiscriminator",
     ["model.generator (user_models.NeedsY) failed on z of shape (8, 16) without labels",
      "missing 1 required positional argument: 'y'", "a forward parameter named labels"]),
    ("alttrain.models.dcgan.DCGANGenerator", "user_models.FiveLogits",
     ["model.discriminator (user_models.FiveLogits) must return one logit per sample",
      "(N,), (N, 1) or (N, 1, 1, 1), got (8, 5)"]),
])
def test_a_model_that_cannot_play_is_one_line_naming_it(tmp_path, user_models, generator, discriminator, fragments):
    args = ["data.image_size=16", "~model.generator", "~model.discriminator", f"+model.generator={{_target_: {generator}}}",
            f"+model.discriminator={{_target_: {discriminator}}}"]
    if generator.startswith("alttrain"):
        args[3] = f"+model.generator={{_target_: {generator}, latent_dim: 16, image_size: 16}}"
    if discriminator.startswith("alttrain"):
        args[4] = f"+model.discriminator={{_target_: {discriminator}, image_size: 16}}"
    line = error_line(train_cli(tmp_path / "run", *args, env=user_models))
    for fragment in fragments:
        assert fragment in line, line
    assert not any((tmp_path / "run").rglob("*"))  # nothing written


def test_a_conditional_run_from_the_command_line_and_samples_of_one_class(tmp_path):
    run = tmp_path / "run"
    proc = train_cli(run, "experiment=digits_cond", "model.base_width=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["class_accuracy_min"] <= metrics["class_accuracy"] <= 1.0
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["meta"]["conditional"] and ckpt["meta"]["num_classes"] == 10
    # The run's sample grid: one row of 8 per class (10 rows of 32-pixel images, 2-pixel padding).
    with Image.open(run / "samples" / "final.png") as png:
        assert png.size == (8 * 34 + 2, 10 * 34 + 2)
    sample = [sys.executable, str(SCRIPTS / "sample.py"), f"checkpoint={run}", "seed=3"]
    for args in (["label=3", "num_samples=6", f"out={tmp_path / 'threes.pt'}"],
                 ["num_samples=20", f"out={tmp_path / 'grid.png'}"],
                 ["label=12", "num_samples=2", f"out={tmp_path / 'bad.pt'}"]):
        done = subprocess.run(sample + args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        if "label=12" in args:
            assert done.returncode == 2 and "error: label must be in [0, 10), got 12" in done.stderr
        else:
            assert done.returncode == 0, done.stderr
    threes = torch.load(tmp_path / "threes.pt", weights_only=True)
    assert threes.shape == (6, 1, 32, 32)
    with Image.open(tmp_path / "grid.png") as png:  # 20 samples asked: 2 per class, one row per class
        assert png.size == (2 * 34 + 2, 10 * 34 + 2)
    # The same seed and class give the same samples (the private noise RNG), here from a Python call.
    from alttrain.metrics.evaluate import generate
    from alttrain.run.sample import load_generator, prior_of

    generator, meta = load_generator(run)
    again = generate(generator, 6, prior_of(meta), seed=3, labels=torch.full((6,), 3), conditional=True)
    assert torch.equal(again, threes)


def test_the_three_network_bigan_runs_from_config_alone(tmp_path):
    run = tmp_path / "run"
    proc = train_cli(run, "experiment=bigan_ring8", "model.hidden_dim=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert list(ckpt["models"]) == ["generator", "encoder", "discriminator"]
    # G: null removed the default G phase; R1 runs every 4 steps.
    assert ckpt["trainer"]["phase_updates"] == {"D": 4, "EG": 4, "R1": 1}
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"modes", "high_quality", "recon_same_mode", "recon_high_quality"} <= set(metrics)


def test_sample_names_a_model_module_that_cannot_be_imported(tmp_path, user_models):
    run = tmp_path / "run"
    assert train_cli(run, *EXAMPLES_PAIR, "+model.latent_shape=[16,1,1]", env=user_models).returncode == 0
    proc = subprocess.run([sys.executable, str(SCRIPTS / "sample.py"), f"checkpoint={run}", f"out={tmp_path / 's.pt'}",
                           "allow=user_models.ExamplesGenerator"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)  # no PYTHONPATH: user_models cannot be imported
    line = error_line(proc)
    assert "cannot build the checkpoint's generator user_models.ExamplesGenerator" in line
    assert "No module named 'user_models'" in line and "PYTHONPATH" in line


def test_the_readme_own_model_example_runs_as_written(tmp_path):
    """The README's my_gan.py and its command, run from a folder holding only that file."""
    import re
    import shlex

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("with a file `my_gan.py` in the current directory"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1).replace("\\\n", " ").strip()
    (tmp_path / "my_gan.py").write_text(code)
    command = command.replace("python scripts/train.py", f"{shlex.quote(sys.executable)} {SCRIPTS / 'train.py'}")
    proc = subprocess.run(f"{command} hydra.run.dir={tmp_path / 'run'} trainer.progress=never", shell=True,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["models"]["generator"]["net.0.weight"].shape \
        == (64, 4)
