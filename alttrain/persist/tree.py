"""Walking a checkpoint payload: nested dicts and lists down to the leaves ``weights_only`` loads."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

# Counter: MultiStepLR keeps its milestones in one, and torch.load(weights_only=True) accepts it.
_MAPPINGS = (dict, collections.OrderedDict, collections.Counter)
_CONTAINERS = (*_MAPPINGS, list, tuple, set)
# Leaf types that torch.load(weights_only=True) accepts without extra allow-listing.
_LEAVES = (
    type(None), bool, int, float, complex, str, bytes,
    torch.Tensor, nn.Parameter, torch.Size, torch.dtype, torch.device,
)


def unstorable(obj: Any, prefix: str = "") -> str | None:
    """``"'<key>' is a <type>"`` naming the first value in ``obj`` that ``torch.load(weights_only=True)``
    refuses; ``None`` when there is none."""
    for key, leaf in walk(obj, prefix):
        if type(leaf) not in _LEAVES:
            return f"'{key}' is a {type(leaf).__module__}.{type(leaf).__qualname__}"
    return None


def walk(obj: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """(dotted key path, leaf) for every non-container value, depth first in insertion order."""
    if type(obj) in _MAPPINGS:
        items: Any = obj.items()
    elif type(obj) in _CONTAINERS:
        items = enumerate(obj)
    else:
        yield prefix, obj
        return
    for key, value in items:
        yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
