"""The shape probe: every phase's loss term runs once on a tiny batch before anything is trained or written.

A model that cannot take what the game hands it (the wrong ``z``, no labels, the data's shape)
fails here with one line naming the network, the input it was given and the contract, instead of
a traceback in the first step. The probe runs in eval mode (no buffer moves) under a forked RNG
(the run's random streams do not move either) and checks what the game's calls return: a
generator's samples must have the data's shape, a discriminator's output one logit per sample.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from alttrain.engine.batch import Batch, LatentPrior
from alttrain.engine.game import Game
from alttrain.errors import AltTrainError, ConfigError

log = logging.getLogger("alttrain")
PROBE_SIZE = 8  # samples per probe batch
LOGIT_SHAPES = "(N,), (N, 1) or (N, 1, 1, 1)"


class ProbeGame(Game):
    """A :class:`Game` whose calls check their inputs' fit and their outputs' shapes."""

    def __init__(self, modules: Mapping[str, nn.Module], prior: LatentPrior | None, conditional: frozenset[str],
                 sample_shape: tuple[int, ...], targets: Mapping[str, str]):
        super().__init__(modules, prior, PROBE_SIZE, conditional)
        self.sample_shape, self.targets = tuple(sample_shape), targets
        self.warned: set[str] = set()

    def _describe(self, name: str) -> str:
        return f"model.{name} ({self.targets.get(name, type(self.modules[name]).__name__)})"

    def run(self, name: str, *inputs: Any, labels: torch.Tensor | None = None, what: str = "input") -> Any:
        if name not in self.modules:
            raise ConfigError(f"it uses network '{name}', which is not a network of this run (the networks are "
                              f"{', '.join(self.modules)}); name one of them")
        if name in self.conditional and labels is None:
            raise ConfigError(f"{self._describe(name)} takes labels, but this phase has none to give it (the data "
                              "set has no labels); use labelled data or an unconditional model")
        try:
            return super().run(name, *inputs, labels=labels)
        except AltTrainError:
            raise
        except Exception as exc:
            shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
            given = f"{what} of shape {shapes}" if shapes else what
            given += " and labels of shape (N,)" if name in self.conditional else " without labels"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{self._describe(name)} failed on {given}: {first}. {_contract(what)}") from None

    def score(self, name: str, *inputs: Any, labels: torch.Tensor | None = None) -> torch.Tensor:
        with torch.enable_grad():  # for the output's grad_fn, which tells a final Sigmoid (see _check_logits)
            out = self.run(name, *inputs, labels=labels, what="samples")
        logits = out[0] if isinstance(out, (tuple, list)) else out
        n = inputs[0].shape[0] if inputs and isinstance(inputs[0], torch.Tensor) else PROBE_SIZE
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) not in ((n,), (n, 1), (n, 1, 1, 1)):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"{self._describe(name)} must return one logit per sample, shape {LOGIT_SHAPES}, "
                              f"got {shape} for {n} samples")
        self._check_logits(name, logits)
        return logits.reshape(n)

    def fake(self, generator: str, n: int, detach: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        z, labels = self.latent(n)
        out = self.run(generator, z, labels=labels, what="z")
        if not isinstance(out, torch.Tensor) or tuple(out.shape[1:]) != self.sample_shape:
            shape = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{self._describe(generator)} makes samples of shape {shape} from z of shape "
                              f"{tuple(z.shape)}, but the data's are {self.sample_shape}; set the model's size "
                              "arguments to auto or match the data")
        return out, labels

    def _check_logits(self, name: str, logits: torch.Tensor) -> None:
        # A final Sigmoid turns logits into probabilities, which every loss here would misread (softplus of
        # a probability is no log-likelihood). Its mark is exact: the output's last op is a sigmoid.
        last_op = type(logits.grad_fn).__name__ if logits.grad_fn is not None else ""
        if name not in self.warned and last_op.startswith("SigmoidBackward"):
            self.warned.add(name)
            log.warning("%s ends in a Sigmoid (its output's last operation on the shape probe): remove it; "
                        "alttrain's losses take logits, and would apply a sigmoid twice", self._describe(name))


def _contract(what: str) -> str:
    if what == "z":
        return ("A generator takes z of shape (N, *latent_shape): (N, latent_dim) from its latent_dim attribute, or "
                "what model.latent_shape says (e.g. [100, 1, 1]); a conditional one also takes labels (N,) as a "
                "forward parameter named labels")
    if what == "samples":
        return ("A discriminator takes samples of the data's shape (N, *sample_shape) (and labels (N,) when its "
                f"forward has a parameter named labels) and returns one logit per sample, {LOGIT_SHAPES}")
    return "Check the model's input size arguments against what the game gives it"


def _copy_of(term: Any) -> Any:
    """A copy to probe with, so that a term that keeps state (a call counter, a moving average) starts its
    run as if the probe had not called it; the term itself when it cannot be copied."""
    try:
        return copy.deepcopy(term)
    except Exception:
        return term


def probe_terms(terms: Mapping[str, Any], phase_terms: Mapping[str, str], modules: Mapping[str, nn.Module],
                prior: LatentPrior | None, conditional: frozenset[str], sample_shape: tuple[int, ...],
                kind: str, num_classes: int | None, targets: Mapping[str, str]) -> None:
    """Run the term of every phase (``phase_terms``: phase -> term key) once on a probe batch."""
    game = ProbeGame(modules, prior, conditional, sample_shape, targets)
    rng = torch.Generator().manual_seed(0)
    samples = torch.randn(PROBE_SIZE, *sample_shape, generator=rng)
    if kind == "images":
        samples = samples.clamp(-1.0, 1.0)
    labels = None if num_classes is None else torch.arange(PROBE_SIZE) % num_classes
    batch = Batch(samples, labels)
    modes = [(m, m.training) for module in modules.values() for m in module.modules()]
    try:
        for m, _ in modes:
            m.training = False
        with torch.random.fork_rng(devices=[]):
            for phase, key in phase_terms.items():
                term = _copy_of(terms[key])
                try:
                    with torch.no_grad():
                        term(game, batch if term.needs_real else None)
                except ConfigError as exc:
                    raise ConfigError(f"phase '{phase}' (loss.{key}): {exc}") from None
    finally:
        for m, training in modes:
            m.training = training
