"""Config nodes -> objects, with failures turned into one readable line naming the config key.

``auto`` model arguments are filled from the data (:data:`AUTO_FROM_DATA`); loss terms built with
``_partial_: true`` functions get plain ``functools.partial`` s (:func:`plain_partials`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.optim.lr_scheduler import LRScheduler

from alttrain.errors import AltTrainError, ConfigError
from alttrain.persist.tree import unstorable
from alttrain.scale.schedules import USE_INSTEAD, check_scheduler

# Model arguments that may be set to `auto`, filled from the data: its sample shape, or its class count.
AUTO_FROM_DATA: dict[str, Callable[[Any], Any]] = {
    "image_size": lambda data: data.sample_shape[-1],
    "channels": lambda data: data.sample_shape[0],
    "in_dim": lambda data: int(np.prod(data.sample_shape)),
    "out_dim": lambda data: int(np.prod(data.sample_shape)),
    "sample_shape": lambda data: list(data.sample_shape),
    "num_classes": lambda data: data.num_classes,
}


def instantiate_node(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with failures turned into one readable line naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, AltTrainError):
            # A constructor names its own argument ("hidden_dim"); say which config node it came from,
            # unless the message names it already, as its key or as a group choice (logger=mlflow).
            named = str(cause).startswith((key, key.replace(".", "=", 1)))
            raise (cause if named else type(cause)(f"{key}: {cause}")) from None
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {cause or exc}") from None
    except AltTrainError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {exc}") from None


def auto_fills(key: str, node: DictConfig, data: Any) -> dict[str, Any]:
    """The values of ``node``'s ``auto`` arguments, from ``data``."""
    fills = {}
    for arg, value in node.items():
        if value == "auto":
            if arg not in AUTO_FROM_DATA:
                raise ConfigError(f"{key}.{arg}=auto is not supported; only {', '.join(AUTO_FROM_DATA)} can be auto")
            fills[arg] = AUTO_FROM_DATA[arg](data)
            if fills[arg] is None:
                raise ConfigError(f"{key}.{arg}=auto, but data {data.name} has no labels to count classes from; "
                                  "use labelled data or an unconditional model")
    return fills


def build_model(key: str, node: DictConfig, data: Any) -> torch.nn.Module:
    """Instantiate a model node, filling ``auto`` arguments from the data."""
    fills = auto_fills(key, node, data)
    try:
        module = instantiate_node(key, node, **fills)
    except AltTrainError as exc:
        if not any(arg in str(exc) for arg in fills):
            raise
        filled = ", ".join(f"{arg}={value}" for arg, value in fills.items())
        raise type(exc)(f"{exc} ({filled} filled from the data's sample shape {tuple(data.sample_shape)}: change the "
                        "data's size or choose a model made for this data)") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{key} must build a torch.nn.Module, got {type(module).__name__}")
    return module


def build_scheduler(key: str, node: DictConfig | None, optimizer: torch.optim.Optimizer) -> LRScheduler | None:
    """Build the ``_partial_`` scheduler node ``key`` for ``optimizer`` (``None`` when the node is null)."""
    if node is None:
        return None
    factory = instantiate_node(key, node)
    target = getattr(factory, "func", factory)  # the class behind functools.partial
    if isinstance(target, type):
        check_scheduler(target, key)  # before calling it: a class that is no scheduler never sees the optimizer
    try:
        scheduler = factory(optimizer)
    except AltTrainError as exc:
        raise type(exc)(f"{key}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {exc}") from None
    check_scheduler(scheduler, key)
    # Found now rather than at the first checkpoint, possibly hours into the run.
    problem = unstorable(scheduler.state_dict(), "state_dict()")
    if problem is not None:
        raise ConfigError(f"{key}: {problem}, which a checkpoint cannot hold (it is loaded with weights_only=True); "
                          f"use a scheduler whose state is numbers, lists and dicts, e.g. {USE_INSTEAD}")
    return scheduler


def build_loss_terms(node: DictConfig) -> dict[str, Any]:
    """The loss group's terms by key (``d``, ``g``, ``r1``, ...), ready to be called every step."""
    return {key: plain_partials(instantiate_node(f"loss.{key}", term)) for key, term in node.items()}


def plain_partials(term: Any) -> Any:
    """Swap the ``_partial_: true`` objects that ``term`` holds (its ``fn``) for plain ``functools.partial``s.

    hydra-core 1.3.8 builds ``_partial_`` nodes as a ``functools.partial`` subclass that re-checks its
    target policy on every call: about 300 µs per call on a 2-core CPU, more than a loss function's
    own work, and a loss is called in every phase. The target was authorised when it was built and
    the trainer calls it with tensors only, so a plain partial of the same function is equivalent.
    """
    for name, value in list(getattr(term, "__dict__", {}).items()):
        if isinstance(value, functools.partial) and type(value) is not functools.partial:
            setattr(term, name, functools.partial(value.func, *value.args, **value.keywords))
    return term


