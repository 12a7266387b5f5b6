"""The run's logger backends and extra callbacks, from the ``logger`` and ``callbacks`` config groups.

Both sections map a name to a ``_target_`` node (``logger.csv: {_target_: ..., filename: ...}``), so
several can be chosen at once (``logger=[tensorboard,csv]``) and a user's own class joins with
``+logger.mine={_target_: ...}`` or ``+callbacks.mine={_target_: ...}``, nothing in alttrain edited.
A logger is built with the run dir as ``log_dir``; a ``null`` entry is switched off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from alttrain.callbacks.loggers.base import Logger
from alttrain.engine.hooks import Callback
from alttrain.errors import ConfigError
from alttrain.run.instantiate import instantiate_node


def build_loggers(cfg: DictConfig, run_dir: str | Path) -> list[Logger]:
    """One backend per entry of ``cfg.logger``, in config order; none when the section is empty or absent."""
    return [_build(key, node, Logger, log_dir=str(run_dir)) for key, node in _entries(cfg, "logger")]


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """One callback per entry of ``cfg.callbacks``, in config order."""
    return [_build(key, node, Callback) for key, node in _entries(cfg, "callbacks")]


def _entries(cfg: DictConfig, section: str) -> list[tuple[str, DictConfig]]:
    node = cfg.get(section)
    if node is None:
        return []
    return [(f"{section}.{name}", entry) for name, entry in node.items() if entry is not None]


def _build(key: str, node: DictConfig, base: type, **kwargs: Any) -> Any:
    built = instantiate_node(key, node, **kwargs)
    if not isinstance(built, base):
        raise ConfigError(f"{key}._target_ {node._target_} builds a {type(built).__name__}, which is not an "
                          f"{base.__module__}.{base.__qualname__}; make it a subclass of that")
    return built
