"""One step of gradient descent on a toy graph: which leaves does the optimizer move?

    python scripts/seed_demo.py none        # or: trainable | var_list | scope (also: alttrain demo none)

The classic TensorFlow 1 demo, rewritten with PyTorch and alttrain. Four one-element leaves
w=3, b=1, x=2, y_=5 feed f = (y_ - (w*x + b))**2, spelled out as

    p = w*x,  y = p + b,  s = -y,  t = s + y_,  f = t*t

The script prints every value and the gradient of f with respect to it, takes one step of plain
gradient descent (SGD, lr 1, no momentum) and prints them again. The cases are TF1's three ways of
keeping the inputs x and y_ fixed, plus ``none``, which trains all four leaves:

* ``trainable``: ``tf.Variable(..., trainable=False)``  ->  ``x.requires_grad_(False)``
* ``var_list``:  ``opt.minimize(f, var_list=[w, b])``   ->  ``torch.optim.SGD([w, b], ...)``
* ``scope``:     ``tf.variable_scope("params")`` + ``tf.get_collection(TRAINABLE_VARIABLES, "params")``
  ->  submodules ``params`` and ``input``, and a param group whose pattern is ``params.*``

Gradients are printed for every quantity, the fixed leaves included: inspecting a gradient is not
training it, so they are taken on detached copies, apart from anything the optimizer sees.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from alttrain.engine.params import resolve_groups, torch_param_groups

CASES = ("none", "trainable", "var_list", "scope")
LR = 1.0


def leaf(value: float) -> nn.Parameter:
    return nn.Parameter(torch.tensor([value]))


def scope(**values: float) -> nn.Module:
    """A bare module holding one leaf per keyword, in order: TF1's ``variable_scope``."""
    module = nn.Module()
    for name, value in values.items():
        module.register_parameter(name, leaf(value))
    return module


def forward(w, b, x, y_) -> dict[str, torch.Tensor]:
    """Every quantity of the graph by name, leaves included, in the order they are printed."""
    p = w * x
    y = p + b
    s = -y
    t = s + y_
    f = t * t
    return {"x": x, "w": w, "b": b, "p": p, "y": y, "y_": y_, "s": s, "t": t, "f": f}


def report(leaves: dict[str, torch.Tensor]) -> None:
    """Print the values, then df/d(each quantity), computed on detached copies of the leaves."""
    copies = {k: v.detach().clone().requires_grad_(True) for k, v in leaves.items()}
    q = forward(**copies)
    grads = torch.autograd.grad(q["f"], list(q.values()))  # df/df = 1 comes out as gf
    v = {k: t.item() for k, t in q.items()}
    g = {k: t.item() for k, t in zip(q, grads)}
    print("x:%.2f, w:%.2f, b:%.2f" % (v["x"], v["w"], v["b"]))
    print("p:%.2f, y:%.2f, y_:%.2f" % (v["p"], v["y"], v["y_"]))
    print("s:%.2f, t:%.2f, f:%.2f" % (v["s"], v["t"], v["f"]))
    print("---------- gradient ----------")
    print("gx:%.2f, gw:%.2f, gb: %.2f" % (g["x"], g["w"], g["b"]))
    print("gp:%.2f, gy:%.2f, gy_:%.2f" % (g["p"], g["y"], g["y_"]))
    print("gs:%.2f, gt:%.2f, gf:%.2f" % (g["s"], g["t"], g["f"]))


def build(case: str) -> tuple[dict[str, nn.Parameter], torch.optim.Optimizer]:
    """The four leaves, and the optimizer that trains the ones this case lets it train."""
    if case == "scope":
        return build_scope()
    leaves = {"w": leaf(3.0), "b": leaf(1.0), "x": leaf(2.0), "y_": leaf(5.0)}
    if case == "none":
        trained = list(leaves.values())
    elif case == "trainable":
        leaves["x"].requires_grad_(False)
        leaves["y_"].requires_grad_(False)
        # tf.trainable_variables(), the default var_list of minimize()
        trained = [p for p in leaves.values() if p.requires_grad]
    else:  # var_list
        # x and y_ still require grad, so backward() fills their .grad too; the optimizer
        # never looks at it, exactly as TF computes nothing for variables outside var_list.
        trained = [leaves["w"], leaves["b"]]
    return leaves, torch.optim.SGD(trained, lr=LR)


def build_scope() -> tuple[dict[str, nn.Parameter], torch.optim.Optimizer]:
    """Leaves in two named submodules; the optimizer gets the group selected by ``params.*``."""
    root = nn.Module()
    root.params = scope(w=3.0, b=1.0)
    root.input = scope(x=2.0, y_=5.0)
    # resolve_groups insists that every trainable parameter belongs to exactly one group. x and y_
    # are data, not weights (TF1 would feed them or declare them trainable=False), so say so
    # where they are made rather than declare a group for them that nothing would train.
    for p in root.input.parameters():
        p.requires_grad_(False)
    groups = resolve_groups(root, [{"name": "params", "params": ["params.*"]}], owner="demo")
    print("train_vars")
    for group in groups:
        for name in group.names:
            print(name)
    leaves = {"w": root.params.w, "b": root.params.b, "x": root.input.x, "y_": root.input.y_}
    return leaves, torch.optim.SGD(torch_param_groups(groups), lr=LR)


def step(leaves: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    forward(**leaves)["f"].backward()
    optimizer.step()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=CASES, help="which leaves the optimizer may move")
    args = parser.parse_args(argv)
    leaves, optimizer = build(args.case)
    report(leaves)
    print("---------- run GradientDescentOptimizer ----------")
    step(leaves, optimizer)
    report(leaves)


if __name__ == "__main__":
    main()
