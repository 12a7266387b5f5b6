"""Which classes a checkpoint may make alttrain build: an explicit allow-list, checked at every depth.

A checkpoint stores the config of the network ``scripts/sample.py`` rebuilds. Hydra's ``instantiate``
follows a ``_target_`` at any depth (a model argument, an ``_args_`` entry) and imports whatever it
names, and importing a module or calling a function is running code. So before anything is imported,
every ``_target_`` in the stored node must be one of:

* a model class that alttrain ships (exact names, not a prefix: ``alttrain.models.dcgan.torch.save``
  starts with ``alttrain.models.`` and is not a model);
* a layer class of ``torch.nn`` (``torch.nn.ReLU``), looked up in the already imported ``torch.nn``;
* a name the user allows explicitly (``allow=pkg.module.Class``), or, with ``trust_target=true``, the
  stored network's own top-level class.

Interpolations (``${...}``) are refused too: the stored config was resolved when it was written, and a
resolver is code.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from alttrain.errors import CheckpointError

_HINT = ("pass allow=<that name> (comma-separated for several) to build it, only for checkpoints you trust")


def shipped_model_targets() -> set[str]:
    """Every spelling of alttrain's own model classes: ``alttrain.models.X`` and ``<defining module>.X``."""
    import alttrain.models as models

    names = set()
    for name in models.__all__:
        cls = getattr(models, name)
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            names.update({f"alttrain.models.{name}", f"{cls.__module__}.{cls.__qualname__}"})
    return names


def _is_torch_layer(path: str) -> bool:
    prefix, _, name = path.rpartition(".")
    if prefix != "torch.nn" or not name.isidentifier():
        return False
    cls = getattr(torch.nn, name, None)
    return isinstance(cls, type) and issubclass(cls, torch.nn.Module)


def _entries(node: Any, where: str) -> Iterator[tuple[Any, Any, str]]:
    """``(container, key, dotted key)`` for every entry of ``node``, depth first, without resolving anything."""
    if isinstance(node, DictConfig):
        keys: Iterable[Any] = node.keys()
    elif isinstance(node, ListConfig):
        keys = range(len(node))
    else:
        return
    for key in keys:
        name = f"{where}.{key}" if isinstance(key, str) else f"{where}[{key}]"
        yield node, key, name
        if not OmegaConf.is_interpolation(node, key):
            yield from _entries(node._get_node(key), name)


def check_targets(node: DictConfig, where: str, allow: Iterable[str] = (), trust_top: bool = False) -> None:
    """Raise :class:`CheckpointError` unless every ``_target_`` in ``node`` is allowed (see the module docstring).

    Nothing is imported: the names are compared as strings, and ``torch.nn`` is already loaded.
    """
    allowed = shipped_model_targets() | set(allow)
    for container, key, name in _entries(node, where):
        if OmegaConf.is_interpolation(container, key):
            raise CheckpointError(f"{name} in the checkpoint is an interpolation (${{...}}), which alttrain never "
                                  "resolves from a file; the checkpoint was not written by alttrain")
        if key != "_target_":
            continue
        target = container._get_node(key)._value()
        if not isinstance(target, str):
            raise CheckpointError(f"{name} in the checkpoint is not a class name: {target!r}")
        top = name == f"{where}._target_"
        if target in allowed or _is_torch_layer(target) or (trust_top and top):
            continue
        raise CheckpointError(f"{name} in the checkpoint names {target}, which is not one of alttrain's models "
                              f"or a torch.nn layer, so it is not built; {_HINT}")
