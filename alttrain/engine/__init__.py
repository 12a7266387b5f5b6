"""The loop and its contracts: no Hydra, no files.

Networks (a module, its named param groups, its optimizer), phases (which networks a step trains,
with what loss), the freeze plan and the audit that proves idle networks still, the batch and
latent prior that feed a step, the game view loss terms see, the callback protocol, the non-finite
guard, and the trainer that runs it all.
"""

from alttrain.engine.audit import IdleAudit
from alttrain.engine.batch import Batch, LatentPrior
from alttrain.engine.freeze import FreezePlan
from alttrain.engine.game import Game, LossTerm
from alttrain.engine.hooks import Callback, CallbackList, PhaseResult
from alttrain.engine.network import Network, build_network
from alttrain.engine.phase import Phase
from alttrain.engine.trainer import Trainer, TrainState

__all__ = ["Batch", "Callback", "CallbackList", "FreezePlan", "Game", "IdleAudit", "LatentPrior", "LossTerm",
           "Network", "Phase", "PhaseResult", "TrainState", "Trainer", "build_network"]
