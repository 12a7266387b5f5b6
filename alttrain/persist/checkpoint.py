"""Checkpoint files that survive crashes, refuse corruption and never run code.

Guarantees, for runs that last days:

* **Atomic writes.** A checkpoint is written to a hidden temp file in the same directory
  (``.last.pt.tmp-<pid>-<rand>``), fsynced, renamed over the target and the directory fsynced.
  ``kill -9`` or a power cut at any moment leaves either the old file or the new one, whole.
* **No NaN/Inf weights on disk.** A diverged run raises :class:`NonFiniteError` instead of
  overwriting the last good checkpoint.
* **Integrity before use.** ``torch.load`` ignores the zip CRC32s, so a flipped byte in tensor
  data would load silently; every member's CRC is checked before anything is unpickled.
* **No code execution.** Files are always loaded with ``weights_only=True``; a payload is refused
  at save time if it holds anything that such a load would reject.

Layout written by :func:`save_rotating`: ``<run>/checkpoints/step_00001000.pt`` (the newest
``keep`` of them) and ``<run>/checkpoints/last.pt`` (same bytes as the newest step file).
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from alttrain.errors import CheckpointError, NonFiniteError
from alttrain.persist.files import (
    atomic_write,
    fsync_dir,
    remove_stale_temps,
    replace_with_copy,
)
from alttrain.persist.schema import FINITE_ROOTS
from alttrain.persist.tree import unstorable, walk

__all__ = [
    "assert_finite", "list_step_checkpoints", "load_checkpoint", "load_into", "resolve_checkpoint_path",
    "save_checkpoint", "save_rotating", "unstorable",
]

LAST_NAME = "last.pt"
STEP_NAME = re.compile(r"step_(\d+)\.pt")  # temp files start with '.', so they never match

def save_checkpoint(payload: dict, path: str | Path) -> None:
    """Write ``payload`` to ``path`` atomically, after checking it is finite and safely loadable.

    Raises :class:`NonFiniteError` (and leaves ``path`` untouched) when a floating tensor under
    ``models``/``optimizers``/``ema`` holds NaN/Inf, and ``TypeError`` when the payload holds an
    object that ``torch.load(weights_only=True)`` would refuse (a bug in the caller).
    """
    path = Path(path)
    _check_storable(payload, path)
    assert_finite(payload, path)
    try:
        if not path.parent.is_dir():
            path.parent.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent.parent)  # the new directory's own entry must be durable too
        atomic_write(path, lambda f: torch.save(payload, f, _use_new_zipfile_serialization=True))
    except OSError as exc:
        raise write_error(path, exc) from None


def assert_finite(payload: Mapping[str, Any], path: str | Path) -> None:
    """Raise :class:`NonFiniteError` naming the first non-finite tensor under the weight sub-trees."""
    for root in FINITE_ROOTS:
        if root not in payload:
            continue
        for key, leaf in walk(payload[root], root):
            if not isinstance(leaf, torch.Tensor) or leaf.is_meta:
                continue
            if not (leaf.is_floating_point() or leaf.is_complex()):
                continue
            if bool(torch.isfinite(leaf).all()):
                continue
            n_nan = int(torch.isnan(leaf).sum())
            n_inf = int(torch.isinf(leaf).sum())
            raise NonFiniteError(
                f"refusing to save checkpoint {path}: tensor '{key}' holds {n_nan} NaN and "
                f"{n_inf} Inf values; the run diverged, so resume from the previous checkpoint "
                "(kept intact) with a lower learning rate"
            )


def write_error(path: Path, exc: OSError) -> CheckpointError:
    """One line for a checkpoint the disk refused (full, read-only, over quota)."""
    return CheckpointError(f"cannot write checkpoint {path}: {exc.strerror or exc}; free space or fix the "
                           "permissions there (the previous checkpoint is intact), then resume=auto")


def save_rotating(payload: dict, ckpt_dir: str | Path, step: int, keep: int = 3) -> Path:
    """Save ``step_{step:08d}.pt`` and ``last.pt`` in ``ckpt_dir``; keep the newest ``keep`` step files.

    Old step files are deleted only after the new ones are durable; ``last.pt`` is never deleted.
    "Newest" means most recently written, so a run resumed from an earlier step replaces the
    abandoned steps rather than being deleted in their favour. ``keep=0`` writes only ``last.pt``.
    Returns the step file written (``last.pt`` when ``keep=0``).
    """
    if not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be an int >= 0, got {keep!r}")
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / LAST_NAME
    if keep == 0:
        save_checkpoint(payload, last)
        written = last
    else:
        written = ckpt_dir / f"step_{step:08d}.pt"
        save_checkpoint(payload, written)
        try:
            replace_with_copy(written, last)
        except OSError as exc:
            raise write_error(last, exc) from None
    # The newest file survives even if clock skew gave it an older mtime than a sibling.
    olds = [p for p in list_step_checkpoints(ckpt_dir) if p != written]
    survivors = max(keep - 1, 0)
    for old in olds[survivors:]:
        old.unlink(missing_ok=True)  # a concurrent cleaner may have removed it already
    remove_stale_temps(ckpt_dir)
    return written


def list_step_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """``step_*.pt`` files in ``ckpt_dir``, most recently written first (ties: higher step first)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = []
    for entry in os.scandir(ckpt_dir):
        match = STEP_NAME.fullmatch(entry.name)
        if match and entry.is_file():
            found.append((entry.stat().st_mtime_ns, int(match.group(1)), Path(entry.path)))
    return [p for _, _, p in sorted(found, reverse=True)]


def resolve_checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run directory meaning ``<dir>/checkpoints/last.pt``."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        # Accept the checkpoints directory itself too: users tab-complete into it.
        for candidate in (p / "checkpoints" / LAST_NAME, p / LAST_NAME):
            if candidate.is_file():
                return candidate
        steps = list_step_checkpoints(p / "checkpoints") or list_step_checkpoints(p)
        hint = f"; pass one of its step files, e.g. {steps[0]}" if steps else ""
        raise CheckpointError(
            f"no checkpoint in directory {p}: expected {p / 'checkpoints' / LAST_NAME}{hint}"
        )
    if p.exists():
        raise CheckpointError(f"checkpoint {p} is not a regular file; pass a .pt file or a run directory")
    raise CheckpointError(
        f"checkpoint {p} does not exist; pass a .pt file or a run directory holding checkpoints/{LAST_NAME}"
    )


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Verify every CRC, then load with ``weights_only=True``; any problem is a :class:`CheckpointError`."""
    p = resolve_checkpoint_path(path)
    # One open file for both steps, so the bytes verified are the bytes loaded even if a writer
    # renames a new checkpoint over the path in between.
    with open(p, "rb") as f:
        _verify_zip(f, p)
        f.seek(0)
        try:
            payload = torch.load(f, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL (\S+)", str(exc))
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{p} contains pickled Python objects{what}, which alttrain never loads "
                "(weights_only=True) because unpickling them can run code; open it with "
                "torch.load(weights_only=False) only if you trust its source"
            ) from None
        except (RuntimeError, ValueError, EOFError, OSError) as exc:
            raise CheckpointError(f"checkpoint {p} could not be loaded: {_first_line(exc)}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{p} holds a {type(payload).__name__}, not an alttrain checkpoint dict")
    return payload


def load_into(module: nn.Module, state_dict: Mapping[str, Any], what: str) -> None:
    """Strictly load ``state_dict`` into ``module``; a mismatch names the first tensor that differs.

    The check runs before any weight is copied, so a refused load leaves ``module`` unchanged.
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"checkpoint entry for the {what} is a {type(state_dict).__name__}, not a state dict"
        )
    problem = _first_mismatch(module.state_dict(), state_dict)
    if problem is None:
        try:
            module.load_state_dict(state_dict, strict=True)
            return
        except RuntimeError as exc:  # e.g. a custom _load_from_state_dict refusing a value
            problem = _first_line(exc)
    raise CheckpointError(
        f"checkpoint does not fit the {what}: {problem}; resume with the same model config"
    )


def _first_mismatch(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str | None:
    for name, want in expected.items():
        if name not in found:
            return f"tensor '{name}' is missing from the checkpoint"
        have = found[name]
        if isinstance(want, torch.Tensor) and not isinstance(have, torch.Tensor):
            return f"entry '{name}' is a {type(have).__name__} in the checkpoint, not a tensor"
        if isinstance(want, torch.Tensor) and have.shape != want.shape:
            return (
                f"tensor '{name}' has shape {tuple(have.shape)} in the checkpoint "
                f"but {tuple(want.shape)} in the model"
            )
        # load_state_dict would cast silently: a float64 or int tensor where float32 belongs is damage.
        if isinstance(want, torch.Tensor) and have.dtype != want.dtype:
            return f"tensor '{name}' has dtype {have.dtype} in the checkpoint but {want.dtype} in the model"
    for name in found:
        if name not in expected:
            return f"tensor '{name}' is in the checkpoint but not in the model"
    return None


def _verify_zip(f: IO[bytes], p: Path) -> None:
    """Check the archive's structure and every member's CRC32 before torch reads any of it."""
    if f.read(4) != b"PK\x03\x04":
        raise CheckpointError(
            f"{p} is not a zip-format PyTorch checkpoint (empty, cut short, legacy torch.save "
            "format or another kind of file); use an older checkpoint from its checkpoints/ directory"
        )
    f.seek(0)
    advice = "use an older checkpoint from its checkpoints/ directory"
    try:
        with zipfile.ZipFile(f) as zf:  # a passed-in file object stays open
            bad_member = zf.testzip()
            names = zf.namelist()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"checkpoint {p} is corrupted (truncated or damaged: {exc}); {advice}") from None
    if bad_member is not None:
        raise CheckpointError(
            f"checkpoint {p} is corrupted (bit-flipped: CRC mismatch in {bad_member}); {advice}"
        )
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{p} is a zip file but not a PyTorch checkpoint (no data.pkl)")


def _check_storable(payload: Any, path: Path) -> None:
    if type(payload) not in (dict, collections.OrderedDict):
        raise TypeError(f"checkpoint payload for {path} must be a dict, got {type(payload).__name__}")
    problem = unstorable(payload)
    if problem is not None:
        raise TypeError(
            f"cannot save checkpoint {path}: {problem}, which "
            "torch.load(weights_only=True) refuses; store tensors, numbers, strings, lists or dicts"
        )


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
