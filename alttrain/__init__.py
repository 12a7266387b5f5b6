"""alttrain: alternating training for PyTorch.

Named parameter groups choose what each optimizer updates; a schedule of phases trains some
networks at a time while the idle ones provably stay still. See README.md.

Where things live (arrows point down: a module imports only from the rows below it)::

    run/        config validation, building, the run dir, the app flow, the CLI
    callbacks/  progress, samples, metrics, checkpoints, loggers/
    persist/    checkpoint files, the payload schema, resume
    games/ models/ data/ metrics/   loss terms and functions, networks, data sets, sample quality
    engine/     the loop and its contracts: trainer, phase, network + params + freeze + audit, batch +
                prior, game view, hooks, non-finite guard (no Hydra, no files)
    scale/      precision, DDP, compile, EMA, lr schedules, random streams
    checks, errors
"""

import importlib
import sys

from alttrain.engine import (
    Batch,
    Callback,
    FreezePlan,
    Game,
    IdleAudit,
    LatentPrior,
    Network,
    Phase,
    PhaseResult,
    Trainer,
    TrainState,
    build_network,
)
from alttrain.engine.params import (
    GroupSpec,
    resolve_groups,
    summary_table,
    torch_param_groups,
)
from alttrain.errors import (
    AltTrainError,
    CheckpointError,
    ConfigError,
    DataError,
    FreezeViolation,
    NonFiniteError,
)
from alttrain.games import DiscriminatorLoss, GeneratorLoss, R1Penalty, losses

__all__ = [
    "AltTrainError", "Batch", "Callback", "CheckpointError", "ConfigError", "DataError", "DiscriminatorLoss",
    "FreezePlan", "FreezeViolation", "Game", "GeneratorLoss", "GroupSpec", "IdleAudit", "LatentPrior", "Network",
    "NonFiniteError", "Phase", "PhaseResult", "R1Penalty", "TrainState", "Trainer", "build_network", "losses",
    "resolve_groups", "summary_table", "torch_param_groups",
]
__version__ = "0.2.0"

# Module paths that configs written for alttrain 0.1 name in their _target_ entries
# (alttrain.schedules.PiecewiseLinearLR, alttrain.objectives.DiscriminatorLoss, alttrain.losses.d_hinge):
# they keep resolving, to the modules those names live in now.
_MOVED = {"alttrain.schedules": "alttrain.scale.schedules", "alttrain.objectives": "alttrain.games.terms",
          "alttrain.losses": "alttrain.games.losses"}
for _old, _new in _MOVED.items():
    sys.modules.setdefault(_old, importlib.import_module(_new))
