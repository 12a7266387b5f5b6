"""scripts/seed_demo.py prints exactly the numbers derived by hand, for each of its four cases.

Derivation (every case starts from w=3, b=1, x=2, y_=5):
  p = w*x = 6, y = p+b = 7, s = -y = -7, t = s+y_ = -2, f = t*t = 4
  gf = 1, gt = 2t = -4, gs = gt = -4, gy_ = gt = -4, gy = -gs = 4, gb = gp = gy = 4,
  gw = gp*x = 8, gx = gp*w = 12
One SGD step with lr 1 moves each trained leaf by minus its gradient:
  w = 3-8 = -5, b = 1-4 = -3 (every case); x = 2-12 = -10, y_ = 5+4 = 9 (case none only).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "seed_demo.py"

BEFORE = """\
x:2.00, w:3.00, b:1.00
p:6.00, y:7.00, y_:5.00
s:-7.00, t:-2.00, f:4.00
---------- gradient ----------
gx:12.00, gw:8.00, gb: 4.00
gp:4.00, gy:4.00, gy_:-4.00
gs:-4.00, gt:-4.00, gf:1.00
---------- run GradientDescentOptimizer ----------
"""

# none: x=-10, w=-5, b=-3, y_=9 -> p = 50, y = 47, s = -47, t = -47+9 = -38, f = 1444;
# gt = 2t = -76 = gs = gy_, gy = gb = gp = 76, gw = gp*x = -760, gx = gp*w = -380.
AFTER_ALL_TRAINED = """\
x:-10.00, w:-5.00, b:-3.00
p:50.00, y:47.00, y_:9.00
s:-47.00, t:-38.00, f:1444.00
---------- gradient ----------
gx:-380.00, gw:-760.00, gb: 76.00
gp:76.00, gy:76.00, gy_:-76.00
gs:-76.00, gt:-76.00, gf:1.00
"""

# x, y_ fixed: x=2, w=-5, b=-3, y_=5 -> p = -10, y = -13, s = 13, t = 18, f = 324;
# gt = 36 = gs = gy_, gy = gb = gp = -36, gw = gp*x = -72, gx = gp*w = 180.
AFTER_W_B_TRAINED = """\
x:2.00, w:-5.00, b:-3.00
p:-10.00, y:-13.00, y_:5.00
s:13.00, t:18.00, f:324.00
---------- gradient ----------
gx:180.00, gw:-72.00, gb: -36.00
gp:-36.00, gy:-36.00, gy_:36.00
gs:36.00, gt:36.00, gf:1.00
"""

EXPECTED = {
    "none": BEFORE + AFTER_ALL_TRAINED,
    "trainable": BEFORE + AFTER_W_B_TRAINED,
    "var_list": BEFORE + AFTER_W_B_TRAINED,
    "scope": "train_vars\nparams.w\nparams.b\n" + BEFORE + AFTER_W_B_TRAINED,
}


BAD_CASE = "everything"


@pytest.fixture(scope="module")
def outputs() -> dict[str, subprocess.CompletedProcess]:
    """Every case (and a bad one) run as a real subprocess; started together, as each imports torch."""
    procs = {case: subprocess.Popen([sys.executable, str(SCRIPT), case], cwd=ROOT, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case in [*EXPECTED, BAD_CASE]}
    results = {}
    for case, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        results[case] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return results


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_prints_hand_derived_numbers(outputs, case):
    result = outputs[case]
    assert result.returncode == 0, result.stderr
    assert result.stdout == EXPECTED[case]


def test_unknown_case_is_a_usage_error(outputs):
    result = outputs[BAD_CASE]
    assert result.returncode == 2  # argparse's usage error
    assert f"invalid choice: '{BAD_CASE}'" in result.stderr
    assert result.stdout == ""


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("seed_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("case, requires_grad", [
    ("none", {"w": True, "b": True, "x": True, "y_": True}),
    ("trainable", {"w": True, "b": True, "x": False, "y_": False}),
    ("var_list", {"w": True, "b": True, "x": True, "y_": True}),
    ("scope", {"w": True, "b": True, "x": False, "y_": False}),
])
def test_fixed_leaves_are_out_of_the_optimizer(demo, case, requires_grad, capsys):
    """The leaves a case keeps fixed never reach the optimizer, whatever report() prints for them."""
    leaves, optimizer = demo.build(case)
    capsys.readouterr()  # the scope case prints its train_vars
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    expected = set(leaves) if case == "none" else {"w", "b"}
    assert {k for k, p in leaves.items() if id(p) in trained} == expected
    assert {k: p.requires_grad for k, p in leaves.items()} == requires_grad
    # report() reads gradients on copies: the real leaves keep no .grad and no flag changes.
    demo.report(leaves)
    assert all(p.grad is None for p in leaves.values())
    assert {k: p.requires_grad for k, p in leaves.items()} == requires_grad
    assert torch.equal(leaves["x"], torch.tensor([2.0]))
