"""Validate the composed config before anything is built.

Hydra accepts ``+new_key=...`` silently and a typo'd key would just be ignored, so every key is
checked against a schema here; ``_target_`` nodes are checked against the signature of what they
build (:mod:`alttrain.run.nodes`). Each problem becomes one :class:`ConfigError` line naming the key
and the fix. The allowed values come from the modules that use them, never restated here.

The networks of a run are the entries of ``model`` that are ``_target_`` nodes, in order; each needs
its ``optim.<name>``. The other entries of ``model`` are sizes shared by interpolation
(``${model.latent_dim}``), plus ``latent_shape`` and ``class_prior``, which the builder reads.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from alttrain.callbacks.loggers.base import Logger
from alttrain.callbacks.progress import MODES as PROGRESS_MODES
from alttrain.checks import (
    check_bool,
    check_choice,
    check_int,
    check_positive,
    is_int,
    is_number,
)
from alttrain.engine.guard import ON_NAN
from alttrain.errors import ConfigError
from alttrain.run.augment import check_augment
from alttrain.run.nodes import check_keys, check_optimizer_section, check_target, locate
from alttrain.scale.compile import BACKENDS
from alttrain.scale.precision import MODES as PRECISION_MODES

Check = Callable[[str, Any], None]
log = logging.getLogger("alttrain")


def _int(lo: int) -> Check:
    return lambda key, value: check_int(key, value, lo)


def _choice(*options: Any) -> Check:
    return lambda key, value: check_choice(key, value, options)


def _optional(check: Check) -> Check:
    return lambda key, value: None if value is None else check(key, value)


def _compile(key: str, value: Any) -> None:
    if not isinstance(value, bool) and value not in BACKENDS:
        raise ConfigError(f"{key} must be false, true (inductor), {', '.join(BACKENDS)}, got {value!r}")


def _str(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}")


def _seed(key: str, value: Any) -> None:
    # torch.manual_seed takes any integer that fits in 64 bits; beyond that it fails with an OverflowError.
    if not is_int(value) or not -(2**63) <= value < 2**64:
        raise ConfigError(f"{key} must be an integer in [-2**63, 2**64), got {value!r}")


def _sha256(key: str, value: Any) -> None:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise ConfigError(f"{key} must be a SHA-256 as 64 hex digits (sha256sum prints it), got {value!r}")


EMA = {"half_life_samples": _optional(_int(1)), "rampup": _optional(check_positive), "network": _str}
TRAINER: dict[str, Check | None] = {
    "max_steps": _int(1), "n_critic": _int(1), "log_every": _int(1), "sample_every": _int(0),
    "checkpoint_every": _int(0), "keep_checkpoints": _int(0), "on_nan": _choice(*ON_NAN),
    "nan_check_every": _int(1), "audit": check_bool, "precision": _choice(*PRECISION_MODES),
    "progress": _choice(*PROGRESS_MODES), "phases": None, "compile": _compile,
    "ema": lambda k, v: check_keys(f"{k}.", v, EMA), "sync_batchnorm": check_bool, "consistency_check": check_bool,
    "collective_timeout": check_positive, "reuse_fakes": _choice("auto", True, False), "profile": check_bool,
}
PHASE: dict[str, Check | None] = {
    "network": _str, "networks": None, "loss": _str, "groups": None, "repeat": _int(1), "every": _int(1),
    "accumulate": _int(1), "weight": lambda k, v: _positive_weight(k, v),
}
METRICS = {"num_samples": _int(1), "eval_every": _int(0), "encoder": _optional(_str), "objective": _str,
           "inception_weights": _optional(_str), "inception_sha256": _optional(lambda k, v: _sha256(k, v))}
TOP: dict[str, Check | None] = {"seed": _seed, "device": _str, "resume": _optional(_str), "sampler": _str}
SECTIONS = ("data", "model", "loss", "optim", "trainer", "metrics", "augment", "logger", "callbacks")
MODEL_SETTINGS = {"latent_shape": None, "class_prior": None}   # read by the builder, not by interpolation
CLASS_PRIORS = ("uniform", "data")


def _positive_weight(key: str, value: Any) -> None:
    if not is_number(value) or not value > 0:
        raise ConfigError(f"{key} must be a finite number > 0, got {value!r}")


def network_names(cfg: DictConfig) -> list[str]:
    """The run's networks: the entries of ``model`` that are ``_target_`` nodes, in order."""
    return [k for k, v in cfg.model.items() if isinstance(v, DictConfig) and "_target_" in v]


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first problem found; return quietly when all is well."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = exc.full_key
        raise ConfigError(f"{key} is required but not set: pass {key}=<value> on the command line") from None
    except InterpolationResolutionError as exc:
        raise ConfigError(f"cannot resolve an interpolation in the config: {exc.msg}") from None
    check_keys("", cfg, {**TOP, **{s: None for s in SECTIONS}})
    networks = _check_model(cfg)
    _check_optim(cfg, networks)
    check_keys("trainer.", cfg.trainer, TRAINER)
    _check_phases(cfg, networks)
    named = (("sampler", cfg.get("sampler", "generator")),
             ("trainer.ema.network", (cfg.trainer.get("ema") or {}).get("network")),
             ("metrics.encoder", (cfg.get("metrics") or {}).get("encoder")))
    for key, name in named:
        if name is not None and name not in networks:
            raise ConfigError(f"{key} is '{name}', which is not a network; the networks are {', '.join(networks)}")
    check_keys("metrics.", cfg.get("metrics", {}), METRICS)
    check_augment(cfg, networks)
    check_target("data", cfg.data)
    for term, node in cfg.loss.items():
        check_target(f"loss.{term}", node)
    _check_named_targets(cfg, "logger", builder_passes_first=True)  # the run dir, as log_dir
    _check_named_targets(cfg, "callbacks")


def _check_named_targets(cfg: DictConfig, section: str, builder_passes_first: bool = False) -> None:
    """``section`` maps names to ``_target_`` nodes (``null`` switches one off). ``builder_passes_first``:
    the builder supplies the target's first argument, so the config neither needs nor may set it."""
    node = cfg.get(section)
    if node is None:
        return
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{section} must be a mapping of name -> {{_target_: ...}}, got {node!r}; choose config "
                          f"files with {section}=<name> or {section}=[<name>,<name>]")
    for name, entry in node.items():
        if entry is None:
            continue
        check_target(f"{section}.{name}", entry, skip_first=builder_passes_first)
        target = locate(f"{section}.{name}", entry._target_)
        if isinstance(target, type) and issubclass(target, Logger):
            target.check_installed()  # a tracker's missing package, before anything is built


def _check_model(cfg: DictConfig) -> list[str]:
    model = cfg.model
    if not isinstance(model, DictConfig):
        raise ConfigError("model must be a mapping of network name -> {_target_: ..., ...}")
    networks = network_names(cfg)
    if not networks:
        raise ConfigError("model declares no network: give at least one entry with a _target_, e.g. "
                          "model.generator={_target_: alttrain.models.MLPGenerator}")
    used = _interpolated_model_keys(cfg)
    for key, value in model.items():
        if key in networks:
            check_target(f"model.{key}", value)
        elif isinstance(value, DictConfig):
            raise ConfigError(f"model.{key} has no _target_, so it is no network; give it _target_: <a nn.Module "
                              f"class>, or remove it (networks: {', '.join(networks)})")
        elif key == "latent_shape":
            if value is not None and (not isinstance(value, ListConfig) or not all(is_int(d) and d > 0 for d in value)):
                raise ConfigError(f"model.latent_shape must be null or a list of sizes such as [100, 1, 1], got {value}")
        elif key == "class_prior":
            check_choice("model.class_prior", value, CLASS_PRIORS)
        elif key not in used:
            # Not an error: an experiment's model sizes stay behind when model= swaps the networks.
            log.warning("model.%s is set but no network uses it (nothing refers to ${model.%s}); to change a "
                        "network, set its argument, e.g. model.generator.<argument>=...", key, key)
    return networks


def _interpolated_model_keys(cfg: DictConfig) -> set[str]:
    """Keys of ``model`` that some interpolation in the config refers to."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and "${" in node:
            found.update(re.findall(r"model\.(\w+)", node))

    walk(raw)
    return found


def _check_optim(cfg: DictConfig, networks: list[str]) -> None:
    optim = cfg.optim
    if not isinstance(optim, DictConfig):
        raise ConfigError("optim must be a mapping of network name -> {optimizer, param_groups, scheduler}")
    for key in optim:
        if key not in networks:
            close = difflib.get_close_matches(str(key), networks, n=1)
            hint = f"; did you mean optim.{close[0]}?" if close else ""
            raise ConfigError(f"optim.{key} names no network (the networks are {', '.join(networks)}){hint}")
    for net in networks:
        if net not in optim:
            raise ConfigError(f"network '{net}' has no optimizer: add optim.{net} with optimizer and param_groups "
                              "(as optim.generator in conf/optim/adam.yaml)")
        check_optimizer_section(net, optim[net])


def _check_phases(cfg: DictConfig, networks: list[str]) -> None:
    phases = cfg.trainer.phases
    if not isinstance(phases, DictConfig):
        raise ConfigError("trainer.phases must be a mapping of phase name -> {network, loss, ...}")
    if not any(phase is not None for phase in phases.values()):
        raise ConfigError("trainer.phases has no phase left; declare at least one, e.g. a D and a G phase")
    for name, phase in phases.items():
        if phase is None:
            continue  # `G: null` in an experiment removes a phase of the defaults, as ~trainer.phases.G does
        where = f"trainer.phases.{name}"
        check_keys(f"{where}.", phase, PHASE, required=("loss",))
        trained = phase_networks(where, phase)
        for net in trained:
            if net not in networks:
                raise ConfigError(f"{where} trains '{net}', which is not a network; the networks are "
                                  f"{', '.join(networks)}")
        if phase.loss not in cfg.loss:
            raise ConfigError(f"{where}.loss is '{phase.loss}', which is not a term of the loss "
                              f"group; choose one of: {', '.join(cfg.loss)}")


def phase_networks(where: str, phase: DictConfig) -> list[str]:
    """The networks a phase entry names: ``network: X`` or ``networks: [X, Y]``, exactly one of them."""
    if ("network" in phase) == ("networks" in phase):
        raise ConfigError(f"{where} needs exactly one of network: <name> or networks: [<name>, ...]")
    if "network" in phase:
        return [phase.network]
    names = phase.networks
    if not isinstance(names, ListConfig) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{where}.networks must be a non-empty list of network names, got {names}")
    return list(names)
