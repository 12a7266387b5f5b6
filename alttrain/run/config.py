"""Validate the composed config before anything is built.

Hydra accepts ``+new_key=...`` silently and a typo'd key would just be ignored, so every key is
checked against a schema here; ``_target_`` nodes are checked against the signature of what they
build. Each problem becomes one :class:`ConfigError` line naming the key and the fix.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from alttrain.errors import ConfigError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _int(lo: int) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < lo:
            raise ConfigError(f"{key} must be an integer >= {lo}, got {value!r}")
    return check


def _choice(*options: Any) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if str(value) not in {str(o) for o in options}:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, options))}, got {value!r}")
    return check


def _type(*types: type, none: bool = False) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value is None and none:
            return
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            names = " or ".join(t.__name__ for t in types) + (" or null" if none else "")
            raise ConfigError(f"{key} must be {names}, got {value!r}")
    return check


def _positive_number(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{key} must be a number > 0, got {value!r}")


def _optional(check: Callable[[str, Any], None]) -> Callable[[str, Any], None]:
    return lambda key, value: None if value is None else check(key, value)


def _compile(key: str, value: Any) -> None:
    if not isinstance(value, bool) and value not in ("inductor", "aot_eager", "eager"):
        raise ConfigError(f"{key} must be false, true (inductor), inductor, aot_eager or eager, got {value!r}")


EMA = {"half_life_samples": _optional(_int(1)), "rampup": _optional(_positive_number)}
TRAINER: dict[str, Callable[[str, Any], None]] = {
    "max_steps": _int(1), "n_critic": _int(1), "log_every": _int(0), "sample_every": _int(0),
    "checkpoint_every": _int(0), "keep_checkpoints": _int(0), "on_nan": _choice("raise", "skip"),
    "nan_check_every": _int(1),
    "audit": _type(bool), "precision": _choice("32", "bf16", "16"), "progress": _choice("auto", "always", "never"),
    "phases": lambda k, v: None, "compile": _compile, "ema": lambda k, v: _check_keys(f"{k}.", v, EMA),
    "sync_batchnorm": _type(bool), "consistency_check": _type(bool),
}
PHASE = {"network": _choice("generator", "discriminator"), "loss": _type(str), "groups": lambda k, v: None,
         "repeat": _int(1), "every": _int(1), "accumulate": _int(1), "weight": _type(int, float)}
METRICS = {"num_samples": _int(1), "eval_every": _int(0)}
TOP = {"seed": _type(int), "device": _type(str), "resume": _type(str, none=True)}
SECTIONS = {"data", "model", "loss", "optim", "trainer", "metrics"}
NETWORKS = ("generator", "discriminator")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found; return quietly when all is well."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        raise ConfigError(f"{key} is required but not set: pass {key}=<value> on the command line") from None
    except InterpolationResolutionError as exc:
        raise ConfigError(f"cannot resolve an interpolation in the config: {exc.msg}") from None
    _check_keys("", cfg, {**TOP, **{s: None for s in SECTIONS}})
    _check_keys("trainer.", cfg.trainer, TRAINER)
    if not isinstance(cfg.trainer.phases, DictConfig):
        raise ConfigError("trainer.phases must be a mapping of phase name -> {network, loss, ...}")
    for name, phase in cfg.trainer.phases.items():
        _check_keys(f"trainer.phases.{name}.", phase, PHASE, required=("network", "loss"))
        if phase.loss not in cfg.loss:
            raise ConfigError(f"trainer.phases.{name}.loss is '{phase.loss}', which is not a term of the loss "
                              f"group; choose one of: {', '.join(cfg.loss)}")
    _check_keys("metrics.", cfg.get("metrics", {}), METRICS)
    for net in NETWORKS:
        _check_keys(f"optim.{net}.", cfg.optim.get(net), {"optimizer": None, "param_groups": None, "scheduler": None},
                    required=("optimizer", "param_groups"))
        _check_target(f"optim.{net}.optimizer", cfg.optim[net].optimizer, skip_first=True)
        _check_scheduler_node(f"optim.{net}.scheduler", cfg.optim[net].get("scheduler"))
        _check_learning_rates(net, cfg.optim[net])
        if net not in cfg.model:
            raise ConfigError(f"model.{net} is missing: the model group must define generator and discriminator")
        _check_target(f"model.{net}", cfg.model[net])
    _check_target("data", cfg.data)
    for term, node in cfg.loss.items():
        _check_target(f"loss.{term}", node)


def _check_keys(prefix: str, node: Any, schema: Mapping[str, Any], required: tuple[str, ...] = ()) -> None:
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


def _check_target(key: str, node: Any, skip_first: bool = False) -> None:
    """The keys of a ``_target_`` node must be arguments of the target (recursively for nested nodes)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise ConfigError(f"{key} must be a config node with a _target_ (e.g. _target_: package.module.Class)")
    target = _locate(key, node._target_)
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: let instantiation speak
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if skip_first:  # an optimizer's first argument (params) is supplied by alttrain
        names = names[1:]
    for sub in node:
        if sub in HYDRA_KEYS:
            continue
        if not accepts_any and sub not in names:
            raise ConfigError(f"unknown config key '{key}.{sub}': {node._target_} takes {', '.join(names) or 'no arguments'}")
        if isinstance(node[sub], DictConfig) and "_target_" in node[sub]:
            _check_target(f"{key}.{sub}", node[sub])
    if node.get("_partial_", False) and not skip_first:
        return  # called later with arguments we cannot see here
    # With skip_first, alttrain supplies only the first argument: every other required one must be here.
    missing = [n for n in names if params[n].default is inspect.Parameter.empty and n not in node]
    if missing:
        raise ConfigError(f"{key} needs {', '.join(missing)} (arguments of {node._target_})")


def _check_scheduler_node(key: str, node: Any) -> None:
    """null, or a ``_partial_`` node that alttrain calls with the network's optimizer."""
    if node is None:
        return
    _check_target(key, node, skip_first=True)
    if node.get("_partial_") is not True:
        raise ConfigError(f"{key} needs _partial_: true (alttrain calls it with the network's optimizer)")


def _locate(key: str, path: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception:
        raise ConfigError(f"{key}._target_ '{path}' cannot be imported; check the spelling or that the "
                          "module is on PYTHONPATH") from None


def _check_learning_rates(net: str, node: DictConfig) -> None:
    if "lr" in node.optimizer:
        _positive_number(f"optim.{net}.optimizer.lr", node.optimizer.lr)
    if not isinstance(node.param_groups, ListConfig) or not node.param_groups:
        raise ConfigError(f"optim.{net}.param_groups must be a non-empty list of {{name, params: [patterns]}}")
    for i, group in enumerate(node.param_groups):
        if isinstance(group, DictConfig) and "lr" in group:
            _positive_number(f"optim.{net}.param_groups[{i}].lr", group.lr)
