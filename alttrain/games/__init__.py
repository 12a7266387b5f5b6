"""Games: loss terms that name the networks they use, and the pure loss functions behind them.

Add a game by writing a term (a callable ``term(game, batch) -> (loss, scalars)`` with
``needs_real``) and a config that declares its networks and phases; the engine needs no change.
"""

from alttrain.games import losses
from alttrain.games.terms import DiscriminatorLoss, GeneratorLoss, R1Penalty

__all__ = ["DiscriminatorLoss", "GeneratorLoss", "R1Penalty", "losses"]
