"""What a sweep optimises: one metric of a run, with the direction that metric is better in.

``metrics.objective`` names it (``auto``: the data's main metric, ``fid`` for images, ``mode_score`` for
the 2-D mixtures). A trial that diverges (a non-finite loss) returns the worst value for that direction
(``inf`` or ``-inf``) instead of ending the sweep, and a sweeper whose ``direction`` disagrees with the
metric's is refused before the first trial trains.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from alttrain.errors import ConfigError

# The direction each metric is better in.
DIRECTIONS = {
    "fid": "minimize", "kid": "minimize", "inception/fid": "minimize", "inception/kid": "minimize",
    "reverse_kl": "minimize",
    "modes": "maximize", "high_quality": "maximize", "mode_score": "maximize", "classes_covered": "maximize",
    "class_accuracy": "maximize", "class_accuracy_min": "maximize", "recon_same_mode": "maximize",
    "inception/is": "maximize", "precision": "maximize", "recall": "maximize", "density": "maximize",
    "coverage": "maximize", "inception/precision": "maximize", "inception/recall": "maximize",
}
AUTO_ORDER = ("fid", "inception/fid", "mode_score")  # what `auto` picks, the first the run reports


def objective_name(name: str, metrics: Mapping[str, Any]) -> str | None:
    """The metric ``name`` means for a run that reported ``metrics`` (``auto`` resolved)."""
    if name != "auto":
        return name
    return next((m for m in AUTO_ORDER if m in metrics), None)


def check_objective(name: str) -> None:
    if name != "auto" and name not in DIRECTIONS:
        raise ConfigError(f"metrics.objective={name!r} is not a metric alttrain knows the direction of; choose auto "
                          f"or one of: {', '.join(sorted(DIRECTIONS))}")


def check_sweeper_direction(name: str, sweeper: Mapping[str, Any] | None) -> None:
    """Refuse a sweeper that would optimise the objective the wrong way (e.g. maximise FID)."""
    direction = (sweeper or {}).get("direction")
    if direction is None or name == "auto" or name not in DIRECTIONS:
        return
    if str(direction) != DIRECTIONS[name]:
        raise ConfigError(f"hydra.sweeper.direction={direction} but metrics.objective={name} is better when "
                          f"{'lower' if DIRECTIONS[name] == 'minimize' else 'higher'}: set "
                          f"hydra.sweeper.direction={DIRECTIONS[name]}")


def objective_value(metrics: Mapping[str, Any], name: str, diverged: bool = False,
                    sweeper_direction: str | None = None) -> float | None:
    """The number a sweeper gets for a run: the objective metric, or the worst value if the run diverged.

    "Worst" follows the metric's direction, or the sweeper's when the objective is ``auto`` (a diverged
    run reported no metric to resolve ``auto`` from).
    """
    if diverged:
        direction = DIRECTIONS.get(name) or sweeper_direction or "minimize"
        return math.inf if str(direction) == "minimize" else -math.inf
    resolved = objective_name(name, metrics)
    if resolved is None or resolved not in metrics:
        return None
    return float(metrics[resolved])
