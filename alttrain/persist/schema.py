"""The checkpoint payload: the one place that says what a checkpoint holds, writes it and checks it.

A checkpoint (``checkpoints/last.pt``, ``step_XXXXXXXX.pt``) is a dict, loaded with
``torch.load(weights_only=True)``:

=================  ==========================================================================
``format``         int, the version of this layout (:data:`FORMAT_VERSION`; 1 had no ``step``)
``step``           int >= 0, completed trainer steps (the same as ``trainer.step``)
``models``         ``{network name: state_dict}`` for every network
``optimizers``     ``{network name: optimizer state_dict}``
``schedulers``     ``{network name: lr scheduler state_dict}``, scheduled networks only
``trainer``        counters: ``step``, ``phase_updates``, ``samples``, ``skipped`` (per phase)
``data``           the data stream's position (``epoch``/``cursor`` or ``batches``)
``precision``      the mode and one GradScaler state per network (fp16)
``ema``            optional: ``model`` (state_dict), ``samples``, ``half_life_samples``, ``rampup``
``rng``            torch, CUDA, NumPy and Python RNG states (rank 0's); ``rng_ranks`` every rank's
``augment``        optional: ``{network name: state}`` of its input augmentation (``kind``, ``calls`` of
                   its random stream, ADA's ``p``), the same on every rank
``callbacks``      ``{state_key: state}`` of callbacks with state (the metrics history, ...)
``config``         the run's resolved config, as YAML text (for people; never executed)
``meta``           what ``scripts/sample.py`` needs without the data set (see :func:`sampling_meta`)
=================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from alttrain.checks import is_int
from alttrain.engine.trainer import TrainState
from alttrain.errors import CheckpointError
from alttrain.persist.tree import walk

if TYPE_CHECKING:  # pragma: no cover
    from alttrain.engine.trainer import Trainer

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Entries a checkpoint must hold to be resumed from.
RESUME_KEYS = ("trainer", "models", "optimizers", "data", "rng")
# Sub-trees whose floating tensors must be finite on disk and on load.
FINITE_ROOTS = ("models", "optimizers", "ema")


def build_payload(trainer: Trainer, *, rng: dict[str, Any], config: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Everything an exact resume needs, plus the config text and the sampling metadata."""
    state = trainer.state
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "step": state.step,
        "models": {n.name: n.module.state_dict() for n in trainer.networks},
        "optimizers": {n.name: n.optimizer.state_dict() for n in trainer.networks},
        "trainer": {"step": state.step, "phase_updates": dict(state.phase_updates), "samples": state.samples,
                    "skipped": dict(state.skipped)},
        "data": trainer.stream.state_dict(),
        "precision": trainer.precision.state_dict(),
        "rng": rng,
        "config": config,
        "meta": meta,
    }
    if trainer.schedulers:
        payload["schedulers"] = {n.name: n.scheduler.state_dict() for n in trainer.networks if n.scheduler is not None}
    if trainer.ema is not None:
        payload["ema"] = trainer.ema.state_dict()
    if trainer.rank_rng is not None:
        payload["rng_ranks"] = trainer.rank_rng  # rank 0's is also "rng"
    augment = {name: fn.state_dict() for name, fn in trainer.transforms.items() if hasattr(fn, "state_dict")}
    if augment:
        payload["augment"] = augment
    callbacks = trainer.callbacks.state_dict()
    if callbacks:
        payload["callbacks"] = callbacks
    return payload


def check_version(payload: Mapping[str, Any], path: Any) -> int:
    """The payload's format version; :class:`CheckpointError` for one this alttrain cannot read."""
    version = payload.get("format", 1)
    if not is_int(version) or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has checkpoint format {version!r}, which this alttrain cannot read (it reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}); use the alttrain version that wrote it")
    return int(version)


def check_training_payload(payload: Mapping[str, Any], path: Any) -> int:
    """Check a payload before it is resumed from or sampled; returns its step.

    Refused with one line naming the entry: an unreadable version, a missing entry, a negative or
    inconsistent step or sample count, a non-finite tensor in the weights, EMA or optimizer state.
    """
    version = check_version(payload, path)
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path} is not an alttrain training checkpoint (it has no '{missing[0]}' entry); "
                              "pass a checkpoints/last.pt or step_*.pt written by alttrain")
    counters = payload["trainer"]
    step = counters.get("step") if isinstance(counters, Mapping) else None
    if not is_int(step) or step < 0:
        raise CheckpointError(f"{path} holds trainer step {step!r}, not an integer >= 0; it is damaged or was not "
                              "written by alttrain")
    if version >= 2 and payload.get("step") != step:
        raise CheckpointError(f"{path} says step {payload.get('step')!r} at the top and {step} in 'trainer'; it is "
                              "damaged: use an older checkpoint from its checkpoints/ directory")
    samples = counters.get("samples", 0)
    if not is_int(samples) or samples < 0:
        raise CheckpointError(f"{path} holds a sample count of {samples!r}, not an integer >= 0; it is damaged")
    for what in ("phase_updates", "skipped"):
        for phase, count in counters.get(what, {}).items():
            if not is_int(count) or count < 0:
                kind = "updates" if what == "phase_updates" else "skipped updates"
                raise CheckpointError(f"{path} holds {count!r} {kind} for phase '{phase}', not an integer >= 0")
    check_finite(payload, path)
    return int(step)


def check_finite(payload: Mapping[str, Any], path: Any) -> None:
    """:class:`CheckpointError` naming the first floating tensor under weights/EMA/optimizers with NaN/Inf."""
    name = first_non_finite(payload)
    if name is not None:
        raise CheckpointError(f"{path} holds NaN or Inf in '{name}': the run had diverged when it was written; "
                              "use an older checkpoint from its checkpoints/ directory")


def first_non_finite(payload: Mapping[str, Any]) -> str | None:
    """The dotted key of the first non-finite floating tensor under :data:`FINITE_ROOTS`, else None."""
    for root in FINITE_ROOTS:
        for key, leaf in walk(payload.get(root, {}), root):
            if isinstance(leaf, torch.Tensor) and not leaf.is_meta and (leaf.is_floating_point() or leaf.is_complex()):
                if not bool(torch.isfinite(leaf).all()):
                    return key
    return None


def train_state(counters: Mapping[str, Any]) -> TrainState:
    return TrainState(step=int(counters["step"]), samples=int(counters["samples"]),
                      phase_updates={k: int(v) for k, v in counters["phase_updates"].items()},
                      skipped={k: int(v) for k, v in counters.get("skipped", {}).items()})


def payload_step(payload: Mapping[str, Any]) -> int:
    """The completed steps of a checkpoint of any readable version."""
    return int(payload["step"]) if "step" in payload else int(payload["trainer"]["step"])
