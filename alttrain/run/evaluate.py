"""Scores a checkpoint's generator, or a folder of images, against a data set: the ``evaluate`` command.

    python scripts/evaluate.py checkpoint=outputs/2026-11-24/10-00-00 inception_weights=~/pt_inception.pth
    python scripts/evaluate.py checkpoint=outputs/.../checkpoints/last.pt num_samples=10000 data.root=/moved out=m.json
    python scripts/evaluate.py images=generated/ data=cifar10 data.root=/data inception_weights=PATH

``checkpoint=`` (a .pt file or a run dir) scores the run's sampling network (its EMA copy when it has
one, unless ``ema=false``) against the run's own data: the data section of the config stored in the
checkpoint, changed by ``data.<key>=value`` arguments (a data set that moved), or replaced by
``data=<name>`` (a group of conf/data/, composed through Hydra with the same overrides). Samples are
drawn as the run's evaluations draw them (noise ``seed``, default 2024), so the default
``num_samples`` (the run's ``metrics.num_samples``) reproduces the run's final metrics. Only
alttrain's own models and data sets are built from a checkpoint (``allow=``/``trust_target=`` as in
``scripts/sample.py``).

``images=`` scores every .png/.jpg/.jpeg under a folder (sorted by path; ``num_samples=N`` takes the
first N), read like the data set's own images (RGB or grayscale to its channel count, shorter side
resized to its size, centre-cropped), against ``data=<name>``.

The metrics are the run's (see :class:`~alttrain.metrics.evaluate.Evaluator`);
``inception_weights=PATH`` (and ``inception_sha256=HEX``, default the published file's) default to
the checkpoint's ``metrics`` settings. They print as JSON; ``out=FILE.json`` writes them too.
``device=auto|cpu|cuda`` runs the generator and the Inception network.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alttrain.errors import CheckpointError, ConfigError, DataError
from alttrain.persist.checkpoint import load_checkpoint, resolve_checkpoint_path
from alttrain.persist.targets import check_targets

CONF = Path(__file__).resolve().parents[2] / "conf"
EVAL_SEED = "2024"  # alttrain.metrics.evaluate.EVAL_SEED, kept as text here so parsing imports nothing heavy
DEFAULTS: dict[str, str | None] = {
    "checkpoint": None, "images": None, "num_samples": None, "seed": EVAL_SEED, "ema": "auto", "allow": "",
    "trust_target": "false", "inception_weights": None, "inception_sha256": None, "device": "auto", "out": None,
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_args(argv: Sequence[str]) -> tuple[dict[str, str | None], list[str]]:
    """``(arguments, data overrides)``; the overrides are the ``data=...`` and ``data.<key>=...`` items."""
    args, data = dict(DEFAULTS), []
    for item in argv:
        key, sep, value = item.partition("=")
        if sep and (key == "data" or key.startswith("data.")):
            data.append(item)
        elif not sep or key not in DEFAULTS:
            raise ConfigError(f"unknown argument '{item}'; use key=value with keys: {', '.join(DEFAULTS)}, "
                              "data=<name>, data.<key>")
        else:
            args[key] = value
    if (args["checkpoint"] is None) == (args["images"] is None):
        raise ConfigError("pass exactly one of checkpoint=<run dir or .pt> and images=<folder>")
    if args["images"] is not None and not any(o.startswith("data=") for o in data):
        raise ConfigError("images= needs the data set to score against: pass data=<name> (e.g. data=cifar10) "
                          "and its settings (data.root=...)")
    for key, low in (("num_samples", 2), ("seed", 0)):
        if args[key] is not None and (not args[key].isdigit() or int(args[key]) < low):
            raise ConfigError(f"{key} must be an integer >= {low}, got {args[key]!r}")
    for key, options in (("ema", ("auto", "true", "false")), ("trust_target", ("true", "false"))):
        if args[key] not in options:
            raise ConfigError(f"{key} must be one of {', '.join(options)}, got {args[key]!r}")
    if args["inception_sha256"] is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", args["inception_sha256"]):
        raise ConfigError(f"inception_sha256 must be 64 hex digits (sha256sum prints it), got "
                          f"{args['inception_sha256']!r}")
    if args["out"] is not None and Path(args["out"]).suffix != ".json":
        raise ConfigError(f"out must end in .json, got {args['out']!r}")
    return args, data


def compose_data(overrides: list[str]) -> DictConfig:
    """The ``data`` section conf/train.yaml composes with ``overrides`` (``data=cifar10``, ``data.root=...``)."""
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        options = ", ".join(sorted(p.stem for p in (CONF / "data").glob("*.yaml")))
        raise ConfigError(f"cannot compose the data config from {' '.join(overrides)}: "
                          f"{str(exc).strip().splitlines()[0]} (data sets: {options})") from None
    missing = sorted(OmegaConf.missing_keys(cfg.data))  # full keys: data.root
    if missing:
        raise ConfigError(f"{missing[0]} is required for this data set: pass {missing[0]}=<value>")
    return cfg.data


def stored_config(payload: dict[str, Any], path: Path, allow: list[str]) -> DictConfig:
    """The run config a checkpoint holds, after its data section is checked to build only allowed classes."""
    text = payload.get("config")
    cfg = OmegaConf.create(text) if isinstance(text, str) and text.strip() else None
    if not isinstance(cfg, DictConfig) or not isinstance(cfg.get("data"), DictConfig):
        raise CheckpointError(f"{path} holds no run config with a data section; it was not written by alttrain's "
                              "training run")
    import alttrain.data as data_sets

    names = [name for name in data_sets.__all__ if name.islower()]  # the factories, not the classes
    factories = {f"alttrain.data.{n}" for n in names} | {f"{getattr(data_sets, n).__module__}.{n}" for n in names}
    check_targets(cfg.data, "config.data", allow=[*factories, *allow])
    return cfg


def data_config(stored: DictConfig, overrides: list[str]) -> DictConfig:
    """A checkpoint's data: composed when ``data=`` is given, else the stored one with ``data.<key>`` edits."""
    if any(o.startswith("data=") for o in overrides):
        return compose_data(overrides)
    node = stored.data
    try:
        edits = OmegaConf.from_dotlist([o.removeprefix("data.") for o in overrides])
        return OmegaConf.merge(node, edits)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"bad data override in {' '.join(overrides)}: {str(exc).splitlines()[0]}") from None


def list_images(folder: str, limit: int | None) -> list[Path]:
    """The image files under ``folder``, sorted, the first ``limit`` of them; checked before any data is read."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"images={folder}: no such folder; pass a folder of .png/.jpg images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) < 2:
        raise DataError(f"images={folder} holds {len(paths)} .png/.jpg/.jpeg files; the metrics need at least 2")
    if limit is not None and limit > len(paths):
        raise ConfigError(f"num_samples={limit} but images={folder} holds only {len(paths)} images")
    return paths[:limit]


def read_images(paths: list[Path], data) -> torch.Tensor:
    """``paths`` read as the image data sets read theirs: ``(N, C, S, S)`` in [-1, 1].

    Converted to the data's channel count (RGB or grayscale), shorter side resized to its size
    (bilinear, antialiased), centre-cropped square, ``x / 127.5 - 1``.
    """
    from PIL import Image
    from torchvision.transforms import functional as TF

    if data.kind != "images":
        raise ConfigError(f"images= scores images, but data {data.name} holds {data.kind}; pass image data")
    channels, size = data.sample_shape[0], data.sample_shape[-1]
    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if channels == 3 else "L")  # decodes: a truncated file fails here
        except Exception as err:
            raise DataError(f"cannot read image {path} ({type(err).__name__}): remove or replace it") from None
        img = TF.center_crop(TF.resize(img, size, antialias=True), [size, size])
        out.append(TF.pil_to_tensor(img).float() / 127.5 - 1.0)  # 0 -> -1 and 255 -> 1 exactly
    return torch.stack(out)


def build_evaluator(data, args: dict[str, str | None], metrics: Any, n: int, generator=None, meta=None):
    """An :class:`~alttrain.metrics.evaluate.Evaluator` for ``data`` with the command's settings."""
    from alttrain.metrics.evaluate import Evaluator
    from alttrain.run.build import resolve_device
    from alttrain.run.sample import prior_of

    device = resolve_device(args["device"])
    weights = args["inception_weights"] or metrics.get("inception_weights")
    sha256 = args["inception_sha256"] or metrics.get("inception_sha256")
    prior = prior_of(meta) if meta is not None else None
    conditional = bool(meta and meta.get("conditional"))
    if generator is not None:
        generator.to(device)
    evaluator = Evaluator(data, lambda: generator, prior, n, device, conditional, inception_weights=weights,
                          inception_sha256=sha256, key_prefix="", seed=int(args["seed"]))
    if not evaluator.scorers:
        raise ConfigError(f"no metric applies to data {data.name} without Inception weights: pass "
                          "inception_weights=<path to pt_inception-2015-12-05-6726825d.pth>")
    return evaluator


def evaluate(args: dict[str, str | None], overrides: list[str]) -> dict[str, Any]:
    """The record the command prints, from :func:`parse_args`' output."""
    score = score_folder if args["images"] is not None else score_checkpoint
    record, evaluator, scores = score(args, overrides)
    return {**record, "num_samples": evaluator.num_samples, **scores, **evaluator.info}


def score_folder(args: dict[str, str | None], overrides: list[str]):
    """``(record, evaluator, scores)`` for ``images=``: the folder is checked before the data set is read."""
    from alttrain.run.instantiate import instantiate_node

    paths = list_images(args["images"], None if args["num_samples"] is None else int(args["num_samples"]))
    data = instantiate_node("data", compose_data(overrides))
    fake = read_images(paths, data)
    evaluator = build_evaluator(data, args, {}, len(fake))
    record = {"images": str(Path(args["images"]).expanduser().resolve()), "data": data.name}
    return record, evaluator, evaluator.score(fake)


def score_checkpoint(args: dict[str, str | None], overrides: list[str]):
    """``(record, evaluator, scores)`` for ``checkpoint=``: fresh samples from its generator."""
    from alttrain.run.instantiate import instantiate_node
    from alttrain.run.sample import load_generator

    allow = [a for a in args["allow"].split(",") if a]
    path = resolve_checkpoint_path(args["checkpoint"])
    payload = load_checkpoint(path)
    stored = stored_config(payload, path, allow)
    data = instantiate_node("data", data_config(stored, overrides))
    generator, meta = load_generator(path, args["ema"], allow, args["trust_target"] == "true")
    if meta["kind"] != data.kind:
        raise ConfigError(f"the checkpoint's generator makes {meta['kind']} but data {data.name} holds {data.kind}; "
                          "pass the run's data")
    metrics = stored.get("metrics") or {}
    n = int(args["num_samples"] or metrics.get("num_samples") or 2500)
    evaluator = build_evaluator(data, args, metrics, n, generator, meta)
    record = {"checkpoint": str(path), "step": payload.get("trainer", {}).get("step"), "data": data.name}
    return record, evaluator, evaluator()


def main(argv: Sequence[str]) -> None:
    args, overrides = parse_args(argv)
    text = json.dumps(evaluate(args, overrides), indent=2)
    if args["out"]:
        out = Path(args["out"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    print(text)
