"""Config -> objects. The only module that reads the Hydra config; everything below takes plain objects."""

from __future__ import annotations

import functools
import logging
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.optim.lr_scheduler import LRScheduler

from alttrain.checkpoint import unstorable
from alttrain.compile import compile_backend
from alttrain.config import validate_config
from alttrain.distributed import Replicas, make_replicas
from alttrain.ema import EMA, make_ema
from alttrain.errors import AltTrainError, ConfigError
from alttrain.network import Network, build_network
from alttrain.objectives import GANPair, R1Penalty
from alttrain.phases import Phase
from alttrain.precision import Precision
from alttrain.schedules import USE_INSTEAD, check_scheduler

log = logging.getLogger("alttrain")

# Model arguments that may be set to `auto` and are then filled from the data's sample shape.
AUTO_FROM_SHAPE = {
    "image_size": lambda shape: shape[-1],
    "channels": lambda shape: shape[0],
    "in_dim": lambda shape: int(np.prod(shape)),
    "out_dim": lambda shape: int(np.prod(shape)),
    "sample_shape": lambda shape: list(shape),
}


@dataclass
class Components:
    """Everything a run is made of, before callbacks are attached."""

    data: Any                      # alttrain.data.DataSource
    generator: Network
    discriminator: Network
    phases: list[Phase]
    gan: GANPair
    precision: Precision
    device: torch.device
    ema: EMA | None = None             # trainer.ema: moving average of G (None: off)
    replicas: Replicas | None = None   # under torchrun: DDP and agreement across processes
    compile: str | None = None         # trainer.compile: a torch.compile backend (None: eager)

    @property
    def networks(self) -> list[Network]:
        return [self.generator, self.discriminator]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def instantiate_node(key: str, node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with failures turned into one readable line naming ``key``."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, AltTrainError):
            # A constructor names its own argument ("hidden_dim"); say which config node it came from.
            raise (cause if str(cause).startswith(key) else type(cause)(f"{key}: {cause}")) from None
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {cause or exc}") from None
    except AltTrainError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {exc}") from None


def build_model(key: str, node: DictConfig, sample_shape: tuple[int, ...]) -> torch.nn.Module:
    """Instantiate a model node, filling ``auto`` arguments from the data's sample shape."""
    fills = {}
    for arg, value in node.items():
        if value == "auto":
            if arg not in AUTO_FROM_SHAPE:
                raise ConfigError(f"{key}.{arg}=auto is not supported; only {', '.join(AUTO_FROM_SHAPE)} can be auto")
            fills[arg] = AUTO_FROM_SHAPE[arg](sample_shape)
    try:
        module = instantiate_node(key, node, **fills)
    except AltTrainError as exc:
        if not any(arg in str(exc) for arg in fills):
            raise
        filled = ", ".join(f"{arg}={value}" for arg, value in fills.items())
        raise type(exc)(f"{exc} ({filled} filled from the data's sample shape {tuple(sample_shape)}: change the "
                        "data's size or choose a model made for this data)") from None
    if not isinstance(module, torch.nn.Module):
        raise ConfigError(f"{key} must build a torch.nn.Module, got {type(module).__name__}")
    return module


def build_scheduler(key: str, node: DictConfig | None, optimizer: torch.optim.Optimizer) -> LRScheduler | None:
    """Build the ``_partial_`` scheduler node ``key`` for ``optimizer`` (``None`` when the node is null)."""
    if node is None:
        return None
    factory = instantiate_node(key, node)
    target = getattr(factory, "func", factory)  # the class behind functools.partial
    if isinstance(target, type):
        check_scheduler(target, key)  # before calling it: a class that is no scheduler never sees the optimizer
    try:
        scheduler = factory(optimizer)
    except AltTrainError as exc:
        raise type(exc)(f"{key}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot build {key} ({node.get('_target_')}): {exc}") from None
    check_scheduler(scheduler, key)
    # Found now rather than at the first checkpoint, possibly hours into the run.
    problem = unstorable(scheduler.state_dict(), "state_dict()")
    if problem is not None:
        raise ConfigError(f"{key}: {problem}, which a checkpoint cannot hold (it is loaded with weights_only=True); "
                          f"use a scheduler whose state is numbers, lists and dicts, e.g. {USE_INSTEAD}")
    return scheduler


def check_shapes(generator: torch.nn.Module, discriminator: torch.nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Run both models once on a tiny batch; a model that cannot take the data's shape fails here."""
    latent_dim = getattr(generator, "latent_dim", None)
    if not isinstance(latent_dim, int):
        raise ConfigError("model.generator must expose an integer attribute latent_dim (the size of z)")
    was_training = generator.training, discriminator.training
    generator.eval(), discriminator.eval()  # eval: no buffer updates from this probe
    try:
        with torch.no_grad():
            fake = generator(torch.zeros(2, latent_dim))
            if tuple(fake.shape[1:]) != tuple(sample_shape):
                raise ConfigError(f"the generator makes samples of shape {tuple(fake.shape[1:])} but the data's are "
                                  f"{tuple(sample_shape)}; set the model's size arguments to auto or match data")
            logits = discriminator(fake)
    except ConfigError:
        raise
    except RuntimeError as exc:
        raise ConfigError(f"the model cannot take the data's shape {tuple(sample_shape)}: "
                          f"{str(exc).splitlines()[0]}") from None
    finally:
        generator.train(was_training[0]), discriminator.train(was_training[1])
    if logits.shape not in ((2,), (2, 1)):
        raise ConfigError(f"the discriminator must return one logit per sample, shape (B,), got {tuple(logits.shape)}")
    return latent_dim


def build_loss_terms(node: DictConfig) -> dict[str, Any]:
    """The loss group's terms by key (``d``, ``g``, ``r1``, ...), ready to be called every step."""
    return {key: _plain_partials(instantiate_node(f"loss.{key}", term)) for key, term in node.items()}


def _plain_partials(term: Any) -> Any:
    """Swap the ``_partial_: true`` objects that ``term`` holds (its ``fn``) for plain ``functools.partial``s.

    hydra-core 1.3.8 builds ``_partial_`` nodes as a ``functools.partial`` subclass that re-checks its
    target policy on every call: about 300 µs per call on a 2-core CPU, more than a loss function's
    own work, and a loss is called in every phase. The target was authorised when it was built and
    the trainer calls it with tensors only, so a plain partial of the same function is equivalent.
    """
    for name, value in list(getattr(term, "__dict__", {}).items()):
        if isinstance(value, functools.partial) and type(value) is not functools.partial:
            setattr(term, name, functools.partial(value.func, *value.args, **value.keywords))
    return term


def build_phases(cfg: DictConfig, networks: dict[str, Network], terms: dict[str, Any]) -> list[Phase]:
    phases = []
    for name, spec in cfg.trainer.phases.items():
        groups = spec.get("groups")
        phases.append(Phase(
            name=name, network=networks[spec.network], loss=terms[spec.loss],
            groups=None if groups is None else tuple(groups), repeat=spec.get("repeat", 1),
            every=spec.get("every", 1), accumulate=spec.get("accumulate", 1), weight=float(spec.get("weight", 1.0)),
        ))
    return phases


def warn_penalty_with_batchnorm(phases: list[Phase], discriminator: torch.nn.Module) -> None:
    """Input-gradient penalties assume samples are scored independently; BatchNorm mixes them."""
    penalised = [p.name for p in phases if getattr(p.loss, "gp_weight", 0) > 0 or isinstance(p.loss, R1Penalty)]
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in discriminator.modules())
    if penalised and has_bn:
        log.warning("phase %s applies a gradient penalty to a discriminator with BatchNorm, which mixes samples "
                    "and makes per-sample input gradients meaningless; set model.discriminator.norm=spectral or none",
                    ", ".join(penalised))


def build_components(cfg: DictConfig) -> Components:
    """Validate ``cfg`` and build data, models, param groups, optimizers, lr schedulers, loss terms and phases."""
    validate_config(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = Precision(cfg.trainer.precision, device)  # before the costly parts: it may refuse the device
    data = instantiate_node("data", cfg.data)
    generator = build_model("model.generator", cfg.model.generator, data.sample_shape)
    discriminator = build_model("model.discriminator", cfg.model.discriminator, data.sample_shape)
    latent_dim = check_shapes(generator, discriminator, data.sample_shape)
    generator.to(device), discriminator.to(device)
    networks = {}
    for name, module in (("generator", generator), ("discriminator", discriminator)):
        optim_cfg = cfg.optim[name]
        factory = instantiate_node(f"optim.{name}.optimizer", optim_cfg.optimizer)
        groups = OmegaConf.to_container(optim_cfg.param_groups, resolve=True)
        networks[name] = net = build_network(name, module, groups, factory)
        net.scheduler = build_scheduler(f"optim.{name}.scheduler", optim_cfg.get("scheduler"), net.optimizer)
    terms = build_loss_terms(cfg.loss)
    phases = build_phases(cfg, networks, terms)
    warn_penalty_with_batchnorm(phases, discriminator)
    gan = GANPair(generator, discriminator, latent_dim, data.batch_size, device)
    t, ema_cfg = cfg.trainer, cfg.trainer.get("ema") or {}
    ema = make_ema(generator, ema_cfg.get("half_life_samples"), ema_cfg.get("rampup"))
    replicas = make_replicas(device, t.get("sync_batchnorm", False), t.get("consistency_check", True),
                             t.checkpoint_every)
    return Components(data, networks["generator"], networks["discriminator"], phases, gan, precision, device,
                      ema=ema, replicas=replicas, compile=compile_backend(t.get("compile", False)))


def flat_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The run's hyper-parameters as a flat dict of scalars, for TensorBoard's HParams view."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)

    walk("", container)
    return out
