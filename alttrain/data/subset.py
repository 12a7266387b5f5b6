"""``data.subset``: train on a fixed fraction of a finite data set, chosen from the run's seed.

Labelled sets keep that fraction of every class (stratified, at least one item of each non-empty
class), so a 10% run sees the classes in their full-set proportions; unlabelled sets keep that
fraction of all items. The choice depends only on ``(seed, fraction, labels)``: every rank of a
run, and every resume of it, trains on the same items. Metric reference sets stay the full set.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from alttrain.checks import is_number
from alttrain.errors import ConfigError
from alttrain.scale.rng import make_generator

SALT_SUBSET = 0x7375


def check_subset(key: str, value: Any) -> float:
    """``value`` as a float if it is a fraction in (0, 1]."""
    if not is_number(value) or not 0 < value <= 1:
        raise ConfigError(f"{key} must be a fraction in (0, 1] (1.0 keeps every item), got {value!r}")
    return float(value)


def _keep(count: int, fraction: float) -> int:
    # Rounded half up, and never below one: a class (or a set) is never dropped entirely.
    return min(count, max(1, math.floor(fraction * count + 0.5))) if count else 0


def subset_items(size: int, fraction: float, seed: int, labels: torch.Tensor | None = None) -> torch.Tensor | None:
    """Sorted indices of the items a run with ``seed`` keeps, or ``None`` for ``fraction == 1`` (all)."""
    if fraction >= 1.0:
        return None
    if labels is None:
        perm = torch.randperm(size, generator=make_generator(seed, SALT_SUBSET))
        return perm[:_keep(size, fraction)].sort().values
    kept = []
    for cls in torch.unique(labels).tolist():
        members = torch.nonzero(labels == cls).flatten()
        # One generator per class: a class's choice does not depend on which other classes exist.
        order = torch.randperm(len(members), generator=make_generator(seed, SALT_SUBSET, cls))
        kept.append(members[order[:_keep(len(members), fraction)]])
    return torch.cat(kept).sort().values
