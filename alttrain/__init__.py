"""alttrain: alternating training for PyTorch.

Named parameter groups choose what each optimizer updates; a schedule of phases trains one network
at a time while the idle one provably stays still. See README.md.
"""

from alttrain import losses
from alttrain.audit import IdleAudit
from alttrain.errors import AltTrainError, CheckpointError, ConfigError, DataError, FreezeViolation, NonFiniteError
from alttrain.freeze import FreezePlan
from alttrain.network import Network, build_network
from alttrain.objectives import DiscriminatorLoss, GANPair, GeneratorLoss, R1Penalty
from alttrain.params import GroupSpec, resolve_groups, summary_table, torch_param_groups
from alttrain.phases import Phase
from alttrain.trainer import Trainer, TrainState

__all__ = [
    "AltTrainError", "CheckpointError", "ConfigError", "DataError", "DiscriminatorLoss", "FreezePlan",
    "FreezeViolation", "GANPair", "GeneratorLoss", "GroupSpec", "IdleAudit", "Network", "NonFiniteError", "Phase",
    "R1Penalty", "TrainState", "Trainer", "build_network", "losses", "resolve_groups", "summary_table",
    "torch_param_groups",
]
__version__ = "0.1.0"
