"""Config -> objects. The only module that reads the Hydra config; everything below takes plain objects.

Order: validate -> seed -> data -> models (``auto`` arguments from the data) -> latent prior ->
loss terms -> shape probe -> param groups and optimizers -> lr schedules -> phases -> EMA -> DDP ->
input augmentation (:mod:`alttrain.run.augment`). Everything is checked before any file is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from alttrain.engine.batch import LatentPrior, infer_latent_shape
from alttrain.engine.network import Network, build_network, takes_labels
from alttrain.engine.phase import Phase
from alttrain.errors import ConfigError
from alttrain.run.augment import build_augment
from alttrain.run.config import network_names, phase_networks, validate_config
from alttrain.run.instantiate import (
    auto_fills,
    build_loss_terms,
    build_model,
    build_scheduler,
    instantiate_node,
)
from alttrain.run.probe import probe_terms
from alttrain.scale.compile import compile_backend, warn_if_slower
from alttrain.scale.distributed import Replicas, make_replicas
from alttrain.scale.ema import EMA, make_ema
from alttrain.scale.precision import Precision
from alttrain.scale.rng import seed_everything

log = logging.getLogger("alttrain")


@dataclass
class Components:
    """Everything a run is made of, before callbacks are attached."""

    data: Any                          # alttrain.data.DataSource
    networks: dict[str, Network]       # by name, in the order of the model config
    phases: list[Phase]
    prior: LatentPrior | None          # z (and labels) for fakes; None when no network draws z
    precision: Precision
    device: torch.device
    sampler: str                       # the network whose samples are drawn, scored and saved for sample.py
    ema: EMA | None = None             # trainer.ema: moving average of one network (None: off)
    replicas: Replicas | None = None   # under torchrun: DDP and agreement across processes
    compile: str | None = None         # trainer.compile: a torch.compile backend (None: eager)
    transforms: dict[str, Any] = field(default_factory=dict)  # augment=: network -> its input augmentation
    adaptive: Any = None               # augment=ada: the ADAController callback that moves p (every rank runs it)

    @property
    def generator(self) -> Network:
        """The sampling network (``sampler``, by default the one named ``generator``)."""
        return self.networks[self.sampler]

    @property
    def sampling_module(self) -> torch.nn.Module:
        """What samples, metrics and sample.py draw from: the EMA of the sampler when it has one."""
        if self.ema is not None and self.ema.source is self.generator.module:
            return self.ema.model
        return self.generator.module


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available; use device=cpu or device=auto")
    return device


def build_prior(cfg: DictConfig, modules: dict[str, torch.nn.Module], data: Any, conditional: bool,
                device: torch.device) -> LatentPrior | None:
    shape = cfg.model.get("latent_shape")
    shape = tuple(shape) if shape is not None else infer_latent_shape(list(modules.values()))
    if shape is None:
        return None
    probs = data.class_frequencies() if conditional and cfg.model.get("class_prior", "uniform") == "data" else None
    return LatentPrior(shape, data.num_classes if conditional else None, probs, device)


def build_phases(cfg: DictConfig, networks: dict[str, Network], terms: dict[str, Any]) -> list[Phase]:
    phases = []
    for name, spec in cfg.trainer.phases.items():
        if spec is None:
            continue  # removed by an experiment (`G: null`)
        groups = spec.get("groups")
        if groups is not None:
            groups = OmegaConf.to_container(groups, resolve=True)
        phases.append(Phase(
            name=name, networks=[networks[n] for n in phase_networks(f"trainer.phases.{name}", spec)],
            loss=terms[spec.loss], groups=groups, repeat=spec.get("repeat", 1), every=spec.get("every", 1),
            accumulate=spec.get("accumulate", 1), weight=float(spec.get("weight", 1.0)),
        ))
    return phases


def warn_penalty_with_batchnorm(phases: list[Phase], networks: dict[str, Network]) -> None:
    """Input-gradient penalties assume samples are scored independently; BatchNorm mixes them."""
    for phase in phases:
        if not getattr(phase.loss, "double_backward", False):
            continue
        name = getattr(phase.loss, "discriminator", None)
        module = networks[name].module if name in networks else None
        if module is not None and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            log.warning("phase %s applies a gradient penalty to a discriminator with BatchNorm, which mixes samples "
                        "and makes per-sample input gradients meaningless; set model.%s.norm=spectral or none",
                        phase.name, name)


def build_components(cfg: DictConfig) -> Components:
    """Validate ``cfg`` and build data, models, param groups, optimizers, lr schedulers, loss terms and phases."""
    validate_config(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = Precision(cfg.trainer.precision, device)  # before the costly parts: it may refuse the device
    data = instantiate_node("data", cfg.data)
    # Streams that read in worker processes pin their batches for the trainer's non_blocking copy to CUDA.
    data.pin_memory = device.type == "cuda"
    names = network_names(cfg)
    modules = {name: build_model(f"model.{name}", cfg.model[name], data) for name in names}
    conditional = frozenset(n for n, m in modules.items() if takes_labels(m))
    if conditional and data.num_classes is None:
        name = next(iter(conditional))
        raise ConfigError(f"model.{name} is conditional (its forward takes labels), but data {data.name} has no "
                          "labels; use labelled data or an unconditional model")
    prior = build_prior(cfg, modules, data, bool(conditional), torch.device("cpu"))
    terms = build_loss_terms(cfg.loss)
    phase_terms = {name: spec.loss for name, spec in cfg.trainer.phases.items() if spec is not None}
    targets = {n: str(cfg.model[n]._target_) for n in names}
    probe_terms(terms, phase_terms, modules, prior, conditional, data.sample_shape, data.kind,
                data.num_classes, targets)
    networks = {}
    for name, module in modules.items():
        module.to(device)
        optim_cfg = cfg.optim[name]
        factory = instantiate_node(f"optim.{name}.optimizer", optim_cfg.optimizer)
        groups = OmegaConf.to_container(optim_cfg.param_groups, resolve=True)
        networks[name] = net = build_network(name, module, groups, factory)
        net.scheduler = build_scheduler(f"optim.{name}.scheduler", optim_cfg.get("scheduler"), net.optimizer)
    phases = build_phases(cfg, networks, terms)
    warn_penalty_with_batchnorm(phases, networks)
    t, ema_cfg = cfg.trainer, cfg.trainer.get("ema") or {}
    sampler = cfg.get("sampler", "generator")
    ema_net = ema_cfg.get("network") or sampler
    ema = make_ema(networks[ema_net].module, ema_cfg.get("half_life_samples"), ema_cfg.get("rampup"))
    replicas = make_replicas(device, t.get("sync_batchnorm", False), t.get("consistency_check", True),
                             t.checkpoint_every, t.get("collective_timeout", 600))
    transforms, adaptive = build_augment(cfg, data, phases, device)
    backend = compile_backend(t.get("compile", False))
    warn_if_slower(backend, device)
    return Components(data, networks, phases, prior.to(device) if prior is not None else None, precision, device,
                      sampler, ema=ema, replicas=replicas, compile=backend,
                      transforms=transforms, adaptive=adaptive)


def sampling_meta(cfg: DictConfig, comps: Components) -> dict[str, Any]:
    """What scripts/sample.py needs to rebuild the sampling network without the data set."""
    node = OmegaConf.to_container(cfg.model[comps.sampler], resolve=True)
    node.update(auto_fills(f"model.{comps.sampler}", cfg.model[comps.sampler], comps.data))
    prior = comps.prior
    shape = list(prior.shape) if prior is not None else None
    return {"generator": OmegaConf.to_yaml(OmegaConf.create(node)), "sampler": comps.sampler,
            "sample_shape": list(comps.data.sample_shape), "kind": comps.data.kind, "data": comps.data.name,
            "world_size": comps.replicas.world_size if comps.replicas is not None else 1,
            "latent_dim": shape[0] if shape is not None and len(shape) == 1 else None, "latent_shape": shape,
            "num_classes": prior.num_classes if prior is not None else None,
            "conditional": comps.generator.conditional}


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyper-parameters as a flat dict of scalars, for the loggers' HParams views."""
    container = OmegaConf.to_container(cfg, resolve=True)
    for section in ("hydra", "logger", "callbacks"):  # where and how a run is watched: no hyper-parameters
        container.pop(section, None)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", container)
    return out
