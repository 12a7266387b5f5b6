"""Prints every param group's learning rate: at train start and every ``every`` completed steps.

A shipped example of a callback chosen by config (``callbacks=lr_monitor``); a callback of your own
is a subclass of :class:`alttrain.engine.hooks.Callback` named the same way
(``+callbacks.mine={_target_: mypackage.MyCallback}``). Lines go to stderr, above the progress bar
when one is drawn::

    lr at step 100: lr/generator/all=0.001 lr/discriminator/all=0.001
"""

from __future__ import annotations

import sys

from alttrain.callbacks.loggers.collector import learning_rates
from alttrain.checks import check_int
from alttrain.engine.hooks import Callback


class LRMonitor(Callback):
    """One line of ``lr/<network>/<group>=<lr>`` per ``every`` completed steps."""

    def __init__(self, every: int = 100):
        self.every = check_int("callbacks.lr_monitor.every", every, 1)

    def on_train_start(self, trainer) -> None:
        self._print(trainer)

    def on_step_end(self, trainer) -> None:
        if trainer.state.step % self.every == 0:
            self._print(trainer)  # schedulers have stepped: the lrs the next step uses

    def _print(self, trainer) -> None:
        from tqdm import tqdm  # writes above an active bar, plainly without one

        rates = " ".join(f"{name}={lr:.4g}" for name, lr in learning_rates(trainer).items())
        tqdm.write(f"lr at step {trainer.state.step}: {rates}", file=sys.stderr)
