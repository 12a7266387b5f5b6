"""Write samples from a trained generator.

    python scripts/sample.py checkpoint=outputs/2026-11-24/10-00-00 num_samples=64 out=grid.png
    python scripts/sample.py checkpoint=outputs/.../checkpoints/last.pt num_samples=2500 out=samples.pt

``out`` ending in ``.png`` writes an image grid (image data) or a scatter plot (2-D data);
``.pt`` writes the raw tensor of shape (num_samples, ...) for your own evaluation.
Other arguments: ``seed=0`` (noise), ``ema=auto|true|false`` (use the EMA generator when the checkpoint has
one), ``allow=pkg.module.Class,...`` and ``trust_target=false``: the checkpoint names the classes that
rebuild the generator, and only alttrain's own models and ``torch.nn`` layers are built, at any depth of
its config; ``allow=`` adds exact class names, ``trust_target=true`` the generator's own top-level class
(only for checkpoints you trust).
The checkpoint is loaded with ``weights_only=True`` after its integrity is checked.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from alttrain.checkpoint import load_checkpoint, load_into, resolve_checkpoint_path
from alttrain.cli import report_user_errors
from alttrain.errors import CheckpointError, ConfigError
from alttrain.persist.targets import check_targets

DEFAULTS = {"checkpoint": None, "num_samples": "64", "out": None, "seed": "0", "ema": "auto", "trust_target": "false",
            "allow": ""}


def parse_args(argv: list[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULTS:
            raise ConfigError(f"unknown argument '{item}'; use key=value with keys: {', '.join(DEFAULTS)}")
        args[key] = value
    for key in ("checkpoint", "out"):
        if not args[key]:
            raise ConfigError(f"{key}=... is required (see the docstring of scripts/sample.py)")
    if not args["num_samples"].isdigit() or int(args["num_samples"]) < 1:
        raise ConfigError(f"num_samples must be an integer >= 1, got {args['num_samples']!r}")
    if Path(args["out"]).suffix not in (".png", ".pt"):
        raise ConfigError(f"out must end in .png or .pt, got {args['out']!r}")
    return args


def build_generator(payload: dict, use_ema: str, trust: bool, allow: list[str] = ()) -> torch.nn.Module:
    text = payload["meta"]["generator"]
    node = OmegaConf.create(text) if isinstance(text, str) else None
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise CheckpointError("the checkpoint's generator description is not a config node with a _target_")
    check_targets(node, "meta.generator", allow=allow, trust_top=trust)
    generator = instantiate(node)
    has_ema = "ema" in payload
    if use_ema == "true" and not has_ema:
        raise ConfigError("ema=true but the checkpoint holds no EMA generator; use ema=false")
    if has_ema and use_ema != "false":
        load_into(generator, payload["ema"]["model"], "EMA generator")
    else:
        load_into(generator, payload["models"]["generator"], "generator")
    return generator


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    path = resolve_checkpoint_path(args["checkpoint"])
    payload = load_checkpoint(path)
    meta = payload.get("meta")
    if not isinstance(meta, dict) or not {"generator", "latent_dim", "kind"} <= set(meta) or "models" not in payload:
        raise CheckpointError(f"{path} is not an alttrain training checkpoint (no generator description in "
                              "'meta'); pass a checkpoints/last.pt or step_*.pt written by scripts/train.py")
    allow = [name for name in args["allow"].split(",") if name]
    generator = build_generator(payload, args["ema"], args["trust_target"] == "true", allow)
    # Imported only now: they pull in torchvision and torchmetrics, which bad input need not wait for.
    from alttrain.evaluate import generate
    from alttrain.render import image_grid, save_png, scatter_plot

    samples = generate(generator, int(args["num_samples"]), meta["latent_dim"], seed=int(args["seed"]))
    out = Path(args["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pt":
        torch.save(samples, out)
    elif meta["kind"] == "images":
        save_png(image_grid(samples, nrow=max(1, int(len(samples) ** 0.5))), out)
    else:
        save_png(scatter_plot(samples), out)
    print(f"wrote {len(samples)} samples to {out}")


if __name__ == "__main__":
    report_user_errors(main, sys.argv[1:])
