"""Installed from a built wheel into a fresh virtual environment, used from a project outside the repository.

The wheel is built from this checkout and installed with ``--no-deps`` into a new venv whose only link
to the outside is a ``.pth`` line pointing at the current environment's site-packages, for torch, Hydra
and the other dependencies (installing those again would take minutes). alttrain itself, its configs
included, comes from the wheel: the test checks it is imported from the new venv.
"""

import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import ROOT

from alttrain.persist.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("alttrain-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return env_dir


def readme_project(tmp_path: Path) -> tuple[Path, str]:
    """The README's "In your own project" files, written out; returns the project dir and its command."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## In your own project"):]
    section = section[:section.index("\n## ", 10)]
    project = tmp_path / "my_project"
    (project / "configs" / "experiment").mkdir(parents=True)
    code = re.search(r"`my_gan.py`:\n\n```python\n(.*?)```", section, re.DOTALL).group(1)
    experiment = re.search(r"`configs/experiment/my_ring.yaml`:\n\n```yaml\n(.*?)```", section, re.DOTALL).group(1)
    (project / "my_gan.py").write_text(code)
    (project / "configs" / "experiment" / "my_ring.yaml").write_text(experiment)
    command = re.search(r"```bash\ncd my_project && (alttrain train [^\n]*)\n```", section).group(1)
    return project, command


def test_the_wheel_runs_the_readme_project_from_outside_the_repository(venv, tmp_path):
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import alttrain, alttrain.conf; "
                            "print(alttrain.__file__); print(alttrain.conf.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # the wheel's copy, configs included
    project, command = readme_project(tmp_path)
    args = command.split()[1:] + ["debug=default", "trainer.progress=never", "metrics.num_samples=64"]
    done = subprocess.run([str(venv / "bin" / "alttrain"), *args], cwd=project, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = (project / "outputs").glob("*/*")
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["models"]["generator"]["net.0.weight"].shape == (64, 8)  # my_gan.Generator(latent_dim=8, width=64)
    sample = subprocess.run([str(venv / "bin" / "alttrain"), "sample", f"checkpoint={run}", "num_samples=16",
                             "out=s.pt", "allow=my_gan.Generator"], cwd=project, capture_output=True, text=True,
                            timeout=120)
    assert sample.returncode == 0, sample.stderr[-3000:]


def test_the_installed_command_lists_its_commands_and_runs_the_demo(venv, tmp_path):
    alttrain = str(venv / "bin" / "alttrain")
    helped = subprocess.run([alttrain, "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "train" in helped.stdout and "demo" in helped.stdout
    demo = subprocess.run([alttrain, "demo", "scope"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert demo.returncode == 0 and "GradientDescentOptimizer" in demo.stdout
    unknown = subprocess.run([alttrain, "trian"], capture_output=True, text=True, cwd=tmp_path)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown command 'trian'")
