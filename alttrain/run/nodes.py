"""Checks of the config's ``_target_`` nodes: every key must be an argument of what the node builds.

Hydra passes unknown keys on to the constructor, where they fail late or, with ``**kwargs``, not at
all. Here each node's keys are compared with the target's signature before anything is built, and
nested ``_target_`` nodes are checked the same way.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig

from alttrain.checks import check_positive
from alttrain.errors import ConfigError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def check_target(key: str, node: Any, skip_first: bool = False) -> None:
    """The keys of a ``_target_`` node must be arguments of the target (recursively for nested nodes).

    ``skip_first``: alttrain supplies the first argument (an optimizer's params, a scheduler's optimizer).
    """
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key} must be a config node with a _target_ (e.g. _target_: package.module.Class)")
    target = locate(key, node._target_)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: let instantiation speak
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if skip_first:
        names = names[1:]
    for sub in node:
        if sub in HYDRA_KEYS:
            continue
        if not accepts_any and sub not in names:
            raise ConfigError(f"unknown config key '{key}.{sub}': {node._target_} takes {', '.join(names) or 'no arguments'}")
        if isinstance(node[sub], DictConfig) and "_target_" in node[sub]:
            check_target(f"{key}.{sub}", node[sub])
    if node.get("_partial_", False) and not skip_first:
        return  # called later with arguments we cannot see here
    # With skip_first, alttrain supplies only the first argument: every other required one must be here.
    missing = [n for n in names if params[n].default is inspect.Parameter.empty and n not in node]
    if missing:
        raise ConfigError(f"{key} needs {', '.join(missing)} (arguments of {node._target_})")


def check_scheduler_node(key: str, node: Any) -> None:
    """null, or a ``_partial_`` node that alttrain calls with the network's optimizer."""
    if node is None:
        return
    check_target(key, node, skip_first=True)
    if node.get("_partial_") is not True:
        raise ConfigError(f"{key} needs _partial_: true (alttrain calls it with the network's optimizer)")


def check_optimizer_section(net: str, node: Any) -> None:
    """``optim.<net>``: an optimizer node, non-empty param groups, positive learning rates, a scheduler or null."""
    check_keys(f"optim.{net}.", node, {"optimizer": None, "param_groups": None, "scheduler": None},
               required=("optimizer", "param_groups"))
    check_target(f"optim.{net}.optimizer", node.optimizer, skip_first=True)
    check_scheduler_node(f"optim.{net}.scheduler", node.get("scheduler"))
    if "lr" in node.optimizer:
        check_positive(f"optim.{net}.optimizer.lr", node.optimizer.lr)
    if not isinstance(node.param_groups, ListConfig) or not node.param_groups:
        raise ConfigError(f"optim.{net}.param_groups must be a non-empty list of {{name, params: [patterns]}}")
    for i, group in enumerate(node.param_groups):
        if isinstance(group, DictConfig) and "lr" in group:
            check_positive(f"optim.{net}.param_groups[{i}].lr", group.lr)


def check_keys(prefix: str, node: Any, schema: Mapping[str, Any], required: tuple[str, ...] = ()) -> None:
    """Every key of ``node`` must be in ``schema`` (a checker ``check(key, value)`` or ``None``)."""
    if node is None or not isinstance(node, (DictConfig, dict)):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {node!r}")
    for key in node:
        if key not in schema:
            raise ConfigError(f"unknown config key '{prefix}{key}'; valid keys here: {', '.join(sorted(schema))}")
        check = schema[key]
        if callable(check):
            check(f"{prefix}{key}", node[key])
    for key in required:
        if key not in node:
            raise ConfigError(f"{prefix}{key} is required")


def locate(key: str, path: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception:
        raise ConfigError(f"{key}._target_ '{path}' cannot be imported; check the spelling or that the "
                          "module is on PYTHONPATH") from None
