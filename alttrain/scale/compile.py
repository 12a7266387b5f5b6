"""``torch.compile`` for the networks' forward passes, with freezing kept outside the compiled code.

Only each module's ``forward`` is compiled (``torch.compile(module)``); :class:`~alttrain.freeze.FreezePlan`
flips ``requires_grad`` outside it. Dynamo guards on those flags and on grad mode, so a network is
compiled once for each state it is called in, and every state occurs in the first step:

* G: trained in its own phase; run under ``no_grad`` as the source of fakes in D's phase;
* D: trained in its own phase; frozen, scoring fakes that carry G's graph, in G's phase.

That is two graphs per network, made in step 0; later steps reuse them and never recompile
(``tests/test_compile.py`` counts). Any other game works the same way: each network is compiled once
per state it is called in. Toggling flags *inside* a compiled function instead would
make each toggle a guard failure or a graph break.

AOTAutograd cannot differentiate its own backward again, so a phase whose loss takes an input
gradient with ``create_graph`` (R1, the WGAN-GP penalty) calls the eager module.

On a CPU, what decides whether compile pays is what the forward saves for backward. A LeakyReLU
applied out of place decomposes to ``where(x > 0, x, slope * x)`` and the partitioner saves the
boolean ``x > 0`` for the backward; inductor's vectorised CPU code (AVX2 and AVX-512, torch 2.14)
stores a bool tensor through the generic ``Vectorized<bool>`` path, 18-22x the cost of eager's store
(0.50 ms against 0.03 ms for 32,768 elements, 4.3 ms against 0.19 ms for 262,144). Applied in place,
the activation's backward reads the sign from its own output, which the next layer saves anyway, and
no mask is stored: the shipped networks' LeakyReLUs work in place for that reason (eager results are
bit-identical; ``tests/test_compile.py`` checks that no shipped network's compiled forward saves a
bool). ResNet's discriminator still saves one, for the ReLU whose output only the final sum reads.
What is left on the MLP is the fixed cost of each compiled call (guards and AOTAutograd's runtime
wrapper), more than an eager forward this small takes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from alttrain.errors import ConfigError

# Backends a config may name: inductor generates kernels; aot_eager and eager are for debugging
# (no code generation: aot_eager checks the autograd capture, eager only the graph capture).
BACKENDS = ("inductor", "aot_eager", "eager")
log = logging.getLogger("alttrain")

Backend = str | Callable[..., Any]


def compile_backend(value: Any) -> str | None:
    """``trainer.compile`` -> a backend name (``true`` is inductor), or ``None`` for eager training."""
    if value is False or value is None:
        return None
    if value is True:
        return "inductor"
    if isinstance(value, str) and value in BACKENDS:
        return value
    raise ConfigError(f"trainer.compile must be false, true (inductor) or one of {', '.join(BACKENDS)}, got {value!r}")


# Measured with scripts/bench.py (alttrain-compile / alttrain, interleaved in one process, 1 torch thread,
# 3 rounds) on a 2-core x86 CPU: DCGAN gains; on the MLP each compiled call's fixed cost (guards,
# AOTAutograd's runtime wrapper) exceeds a forward this small, so compile cannot pay there (module docstring).
CPU_MEASURED = "1.10x eager steps/s on DCGAN digits but 0.73x on the MLP GAN"


def warn_if_slower(backend: str | None, device) -> None:
    """Say so when compiling where it was measured to slow small networks down (inductor on a CPU)."""
    if backend == "inductor" and getattr(device, "type", device) == "cpu":
        log.warning("trainer.compile=true on a CPU was measured at %s (README, 'Compile'): for networks as "
                    "small as that MLP the fixed cost of each compiled call exceeds what it saves; train eagerly "
                    "(trainer.compile=false) unless scripts/bench.py --impls alttrain,alttrain-compile shows a gain "
                    "for yours", CPU_MEASURED)


def compile_module(module: nn.Module, backend: Backend) -> nn.Module:
    """``module`` with a compiled forward; parameters, buffers and state dict stay ``module``'s own."""
    return torch.compile(module, backend=backend)


def needs_double_backward(term: Any) -> bool:
    """Does this loss term differentiate through an input gradient (``create_graph=True``)?

    Terms say so with a ``double_backward`` attribute (the R1 and WGAN-GP penalties do).
    """
    return bool(getattr(term, "double_backward", False))
