"""The ``augment`` config section (``conf/augment/``): its checks, and the objects it builds.

``augment.kind`` is ``none``, ``diffaug`` or ``ada``; ``augment.networks`` names the networks whose
first input is augmented (the discriminator); ``augment.transforms`` holds each transform's
strength, with the allowed values of :mod:`alttrain.augment.diffaug` or :mod:`alttrain.augment.ada`;
``augment.ada`` holds the controller's settings (:mod:`alttrain.augment.controller`) and the
initial ``p``. The builder turns it into the Trainer's ``transforms`` and, for ADA, the controller
callback, which every rank runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from alttrain.augment import (
    ADAController,
    AdaptiveAugment,
    Augmentation,
    DiffAugment,
    ada,
    controller,
    diffaug,
)
from alttrain.checks import check_choice
from alttrain.engine.phase import Phase
from alttrain.errors import ConfigError
from alttrain.run.nodes import check_keys
from alttrain.scale.processes import context

KINDS = ("none", "diffaug", "ada")
TRANSFORMS = {"diffaug": diffaug.FIELDS, "ada": ada.FIELDS}


def check_augment(cfg: DictConfig, networks: Sequence[str]) -> None:
    """Raise :class:`ConfigError` for the first problem in ``cfg.augment`` (absent: no augmentation)."""
    node = cfg.get("augment")
    if node is None:
        return
    check_keys("augment.", node, {"kind": None, "networks": None, "transforms": None, "ada": None}, required=("kind",))
    kind = check_choice("augment.kind", node.kind, KINDS)
    allowed = {"none": ("kind", "networks"), "diffaug": ("kind", "networks", "transforms")}.get(kind, tuple(node))
    extra = [key for key in node if key not in allowed]
    if extra:
        raise ConfigError(f"augment.{extra[0]} is set but augment.kind={kind} does not use it; remove it, or choose "
                          f"augment={'ada' if extra[0] == 'ada' else 'diffaug'}")
    names = node.get("networks")
    if not isinstance(names, ListConfig) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"augment.networks must be a list of network names such as [discriminator], got {names}")
    for name in names:
        if name not in networks:
            raise ConfigError(f"augment.networks names '{name}', which is not a network; the networks are "
                              f"{', '.join(networks)}")
    if kind == "none":
        return
    check_keys("augment.transforms.", node.get("transforms", {}), TRANSFORMS[kind])
    if kind == "ada":
        check_keys("augment.ada.", node.get("ada", {}), controller.FIELDS)
        phase = node.get("ada", {}).get("phase", "D")
        phases = [name for name, spec in cfg.trainer.phases.items() if spec is not None]
        if phase not in phases:
            raise ConfigError(f"augment.ada.phase is '{phase}', which is not a phase; the phases are "
                              f"{', '.join(phases)} (name the discriminator's)")


def build_augment(cfg: DictConfig, data: Any, phases: Sequence[Phase],
                  device: torch.device) -> tuple[dict[str, Augmentation], ADAController | None]:
    """``{network: augmentation}`` for the Trainer, and ADA's controller (``None`` unless augment=ada)."""
    node = cfg.get("augment")
    if node is None or node.kind == "none" or not node.networks:
        return {}, None
    if data.kind != "images":
        raise ConfigError(f"augment={node.kind} transforms images, but data {data.name} holds {data.kind}; "
                          "use augment=none")
    settings = _plain(node.get("transforms"))
    seed, rank = int(cfg.seed), context().rank
    if node.kind == "diffaug":
        augmentation: Augmentation = DiffAugment(**settings, seed=seed, rank=rank, device=device)
        return {name: augmentation for name in node.networks}, None
    ada_settings = _plain(node.get("ada"))
    height, width = data.sample_shape[-2:]
    if settings.get("rotate90", True) and height != width:
        raise ConfigError(f"augment.transforms.rotate90 turns square images only, but data {data.name} is "
                          f"{height}x{width}; set augment.transforms.rotate90=false")
    pipeline = AdaptiveAugment(**settings, p=ada_settings.pop("p", 0.0), seed=seed, rank=rank, device=device)
    phase = next(p for p in phases if p.name == ada_settings.get("phase", "D"))
    if not getattr(phase.loss, "needs_real", False):
        raise ConfigError(f"augment.ada.phase is '{phase.name}', whose loss sees no real batch, so it reports no "
                          "score/real; name the discriminator's phase, e.g. augment.ada.phase=D")
    return {name: pipeline for name in node.networks}, ADAController(pipeline, **ada_settings)


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if node is not None else {}
