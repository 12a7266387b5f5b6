"""One generator forward per step where the schedule allows it (``trainer.reuse_fakes``).

The loop people write by hand (pytorch/examples' DCGAN) runs G once per step: D's update scores
``fake.detach()`` and G's update backpropagates through the same ``fake``. alttrain's phases each draw
their own fakes unless a *pair* is found: a phase D that scores detached fakes of generator G (its loss
term says ``fakes = "detached"`` and names ``generator``), followed in the schedule by a phase that
trains G alone on that generator's fakes with their graph (``fakes = "graph"``), both due at every step
with ``accumulate=1``, G's phase once per step, and no phase in between that trains G. Then, before D's
last update of the step, the fakes are made once, in G's phase plan (G trainable, so they carry its
graph and G's buffers move as in its own update), and both terms get them through ``Game.shared``.

Freezing keeps its guarantees: that forward happens before D's update begins, so D's update sees G
idle and unchanged (no gradient reaches G through detached fakes, and G's buffers are not touched by
D's phase); G's update finds D idle as always. ``reuse_fakes=false`` is the math of one forward per phase.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from alttrain.engine.phase import Phase
from alttrain.errors import ConfigError

MODES = ("auto", True, False)


@dataclass(frozen=True)
class ReusePair:
    producer: str      # the D phase, before whose last update the fakes are made
    consumer: str      # the G phase that backpropagates through them
    generator: str     # the network that makes them


def plan_reuse(phases: Sequence[Phase], mode: str | bool = "auto") -> dict[str, ReusePair]:
    """``{producer phase: pair}`` of the phases whose fakes are shared; empty when off or unsound.

    ``mode=True`` demands at least one pair and says why there is none.
    """
    if mode not in MODES:
        raise ConfigError(f"trainer.reuse_fakes must be auto, true or false, got {mode!r}")
    if mode is False:
        return {}
    pairs, reasons = {}, []
    for i, d in enumerate(phases):
        generator = getattr(d.loss, "generator", None)
        if getattr(d.loss, "fakes", None) != "detached" or generator is None:
            continue
        reason = _unsound(phases, i, generator)
        if isinstance(reason, Phase):
            pairs[d.name] = ReusePair(d.name, reason.name, generator)
        else:
            reasons.append(f"phase '{d.name}': {reason}")
    if mode is True and not pairs:
        why = "; ".join(reasons) or "no phase scores a generator's fakes detached"
        raise ConfigError(f"trainer.reuse_fakes=true, but no D phase can share its fakes with a G phase ({why}); "
                          "set trainer.reuse_fakes=auto or false")
    return pairs


def _unsound(phases: Sequence[Phase], i: int, generator: str) -> Phase | str:
    """The consumer phase for producer ``phases[i]``, or why there is none."""
    d = phases[i]
    if d.every != 1 or d.accumulate != 1:
        return f"it runs every {d.every} steps with accumulate={d.accumulate} (needs every step, accumulate=1)"
    for g in phases[i + 1:]:
        trains_generator = generator in g.network_names
        if trains_generator and getattr(g.loss, "fakes", None) == "graph" and getattr(g.loss, "generator", None) \
                == generator and g.network_names == (generator,):
            if g.every != 1 or g.accumulate != 1 or g.repeat != 1:
                return (f"phase '{g.name}' runs every {g.every} steps, {g.repeat} times, accumulate={g.accumulate} "
                        "(needs once per step, accumulate=1)")
            return g
        if trains_generator:
            return f"phase '{g.name}' trains '{generator}' before its fakes would be used"
    return f"no later phase trains '{generator}' alone on its fakes"


def share_fakes(trainer, pair: ReusePair) -> None:
    """Make the step's fakes once, in G's phase plan, for D's update (detached) and G's (with the graph)."""
    games = trainer.views.games
    drop_fakes(games, pair)
    with trainer.plans[pair.consumer](), trainer.precision.autocast():
        shared = games[pair.consumer].fake(pair.generator, trainer.batch_size)
    games[pair.consumer].shared[pair.generator] = games[pair.producer].shared[pair.generator] = shared


def drop_fakes(games, pair: ReusePair) -> None:
    for name in (pair.producer, pair.consumer):
        games[name].shared.pop(pair.generator, None)
