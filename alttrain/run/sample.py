"""Samples from a trained checkpoint: the ``sample`` command and :func:`load_generator` for Python.

    python scripts/sample.py checkpoint=outputs/2026-11-24/10-00-00 num_samples=64 out=grid.png
    python scripts/sample.py checkpoint=outputs/.../checkpoints/last.pt num_samples=2500 out=samples.pt
    python scripts/sample.py checkpoint=outputs/<digits_cond run> label=3 num_samples=16 out=threes.png

``out`` ending in ``.png`` writes an image grid (image data; a conditional model without ``label=``
gives one row per class) or a scatter plot (2-D data); ``.pt`` the raw tensor of shape
``(num_samples, ...)``. Other arguments: ``seed=0`` (noise), ``label=K`` (class K, conditional models),
``ema=auto|true|false`` (use the EMA generator when the checkpoint has one), ``allow=pkg.mod.Class,...``
and ``trust_target=false``: the checkpoint names the classes that rebuild the generator, and only
alttrain's own models and ``torch.nn`` layers are built, at any depth of its config; ``allow=`` adds
exact class names, ``trust_target=true`` the generator's own top-level class (only for checkpoints you
trust). The checkpoint is loaded with ``weights_only=True`` after its integrity is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from alttrain.engine.batch import LatentPrior
from alttrain.errors import CheckpointError, ConfigError
from alttrain.persist.checkpoint import (
    load_checkpoint,
    load_into,
    resolve_checkpoint_path,
)
from alttrain.persist.schema import check_finite, check_version
from alttrain.persist.targets import check_targets

DEFAULTS = {"checkpoint": None, "num_samples": "64", "out": None, "seed": "0", "ema": "auto", "trust_target": "false",
            "allow": "", "label": None}


def parse_args(argv: Sequence[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"unknown argument '{item}'; use key=value with keys: {', '.join(DEFAULTS)}")
        args[key] = value
    for key in ("checkpoint", "out"):
        if not args[key]:
            raise ConfigError(f"{key}=... is required (see alttrain sample --help)")
    for key in ("num_samples", "seed") + (("label",) if args["label"] is not None else ()):
        if not args[key].isdigit() or (key == "num_samples" and int(args[key]) < 1):
            raise ConfigError(f"{key} must be an integer >= {1 if key == 'num_samples' else 0}, got {args[key]!r}")
    if args["ema"] not in ("auto", "true", "false"):
        raise ConfigError(f"ema must be auto, true or false, got {args['ema']!r}")
    if Path(args["out"]).suffix not in (".png", ".pt"):
        raise ConfigError(f"out must end in .png or .pt, got {args['out']!r}")
    return args


def load_generator(checkpoint: str | Path, ema: str = "auto", allow: Sequence[str] = (),
                   trust_target: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The sampling network of a training checkpoint, with its weights (the EMA's when ``ema`` allows),
    and the checkpoint's ``meta``. Only allow-listed classes are built (see the module docstring)."""
    path = resolve_checkpoint_path(checkpoint)
    payload = load_checkpoint(path)
    check_version(payload, path)
    meta = payload.get("meta")
    if not isinstance(meta, dict) or not {"generator", "kind"} <= set(meta) or "models" not in payload:
        raise CheckpointError(f"{path} is not an alttrain training checkpoint (no generator description in "
                              "'meta'); pass a checkpoints/last.pt or step_*.pt written by alttrain")
    check_finite(payload, path)
    text = meta["generator"]
    node = OmegaConf.create(text) if isinstance(text, str) else None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise CheckpointError("the checkpoint's generator description is not a config node with a _target_")
    check_targets(node, "meta.generator", allow=allow, trust_top=trust_target)
    try:
        generator = instantiate(node)
    except InstantiationException as exc:
        cause: BaseException = exc
        while cause.__cause__ is not None:  # Hydra wraps the import error; its message is what helps
            cause = cause.__cause__
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise CheckpointError(f"cannot build the checkpoint's generator {node._target_}: {first}; put the package "
                              "that defines it on PYTHONPATH") from None
    name = meta.get("sampler", "generator")
    has_ema = "ema" in payload
    if ema == "true" and not has_ema:
        raise ConfigError("ema=true but the checkpoint holds no EMA generator; use ema=false")
    if has_ema and ema != "false":
        load_into(generator, payload["ema"]["model"], "EMA generator")
    else:
        load_into(generator, payload["models"][name], name)
    return generator, meta


def prior_of(meta: dict[str, Any]) -> LatentPrior:
    """The latent prior a checkpoint's generator samples from (uniform labels when conditional)."""
    shape = meta.get("latent_shape") or [meta["latent_dim"]]
    return LatentPrior(tuple(shape), meta.get("num_classes") if meta.get("conditional") else None)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    generator, meta = load_generator(args["checkpoint"], args["ema"], [a for a in args["allow"].split(",") if a],
                                     args["trust_target"] == "true")
    # Imported only now: they pull in torchvision, which bad input need not wait for.
    from alttrain.metrics.evaluate import class_rows, generate
    from alttrain.render import grid_rows, image_grid, save_png, scatter_plot

    prior, n, conditional = prior_of(meta), int(args["num_samples"]), bool(meta.get("conditional"))
    labels, nrow = None, grid_rows(n)
    if args["label"] is not None:
        if not conditional:
            raise ConfigError("label= needs a conditional generator; this checkpoint's is unconditional")
        if int(args["label"]) >= prior.num_classes:
            raise ConfigError(f"label must be in [0, {prior.num_classes}), got {args['label']}")
        labels = torch.full((n,), int(args["label"]), dtype=torch.int64)
    elif conditional and Path(args["out"]).suffix == ".png" and meta["kind"] == "images":
        per_class = max(1, -(-n // prior.num_classes))
        labels, nrow = class_rows(prior.num_classes, per_class), per_class  # one row per class
    samples = generate(generator, len(labels) if labels is not None else n, prior, seed=int(args["seed"]),
                       labels=labels, conditional=conditional)
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(samples, out)
    elif meta["kind"] == "images":
        save_png(image_grid(samples, nrow=nrow), out)
    else:
        save_png(scatter_plot(samples), out)
    print(f"wrote {len(samples)} samples to {out}")
