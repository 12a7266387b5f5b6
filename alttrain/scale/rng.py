"""Every random stream of a run: seeding it, deriving independent seeds, capturing and restoring it.

:func:`seed_everything` is the one place a run seeds torch, NumPy and Python. :func:`derive_seed`
mixes integers into unrelated seeds (the data streams, each rank's training stream).

A resume is only a resume if the next batch, the next noise vector and the next dropout mask are
the ones the interrupted run would have drawn. That needs the torch CPU generator, every CUDA
device's generator, NumPy's global ``RandomState`` and Python's ``random``.

``np.random.get_state()`` returns a tuple holding a NumPy array, and ``random.getstate()`` a
nested tuple; ``torch.load(weights_only=True)`` refuses NumPy arrays, so both are stored as plain
ints, floats, lists and tensors here.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from alttrain.errors import CheckpointError

RNG_KEYS = ("torch", "cuda", "numpy", "python")
_MASK64 = (1 << 64) - 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), NumPy's global state and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _splitmix64(x: int) -> int:
    # The SplitMix64 finaliser: a bijection on 64-bit ints that scrambles nearby inputs apart.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """Mix integers into one non-negative 63-bit seed; different tuples give unrelated streams."""
    h = 0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h >> 1  # manual_seed takes any 64-bit value, but keep it in int64 range for safety


def make_generator(*parts: int) -> torch.Generator:
    """A fresh CPU generator seeded from ``parts`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def capture_rng_state() -> dict[str, Any]:
    """Snapshot of the torch (CPU and all CUDA devices), NumPy-global and Python RNG states."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    py_version, py_internal, py_gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        # get_rng_state_all would initialise CUDA on a machine without it; [] means "none".
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "bit_generator": str(np_name),
            # uint32 words held in int64 so every torch version can store and compare them.
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "internal": [int(x) for x in py_internal],
            "gauss_next": py_gauss_next,  # None or a float: both load under weights_only
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put every generator back where :func:`capture_rng_state` found it.

    CUDA states are restored for the devices present both in the checkpoint and on this machine,
    so a GPU run resumed on CPU still gets its CPU, NumPy and Python streams back.
    """
    if not isinstance(state, Mapping) or any(k not in state for k in RNG_KEYS):
        found = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise CheckpointError(
            f"checkpoint RNG state must hold {list(RNG_KEYS)}, found {found}; "
            "it was not written by capture_rng_state"
        )
    # set_rng_state wants a CPU ByteTensor; map_location may have moved it to a GPU.
    torch.set_rng_state(state["torch"].cpu())
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device=index)
    _restore_numpy(state["numpy"])
    _restore_python(state["python"])


def _restore_numpy(np_state: Mapping[str, Any]) -> None:
    keys = np_state["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            np_state["bit_generator"],
            keys,
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )


def _restore_python(py_state: Mapping[str, Any]) -> None:
    gauss_next = py_state["gauss_next"]
    random.setstate(
        (
            int(py_state["version"]),
            tuple(int(x) for x in py_state["internal"]),
            None if gauss_next is None else float(gauss_next),
        )
    )
