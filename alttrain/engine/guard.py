"""The non-finite guard: which updates are applied, and when NaN/Inf stops the run.

``on_nan="raise"`` (the default) with ``check_every > 1`` records each update's loss on the device
and checks those losses and every network's weights with one host sync in :meth:`NonFiniteGuard.verify`
(every ``check_every`` steps, before every checkpoint, at the end). A non-finite gradient shows in
the weights it was stepped into, so no per-update gradient check is needed. ``check_every=1``
checks each update's loss and gradient norm before its optimizer step and names the exact update.
``on_nan="skip"`` runs that check before every step too, so a bad update can be discarded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from alttrain.checks import check_choice, check_int
from alttrain.engine.network import Network
from alttrain.errors import NonFiniteError

ON_NAN = ("raise", "skip")


class NonFiniteGuard:
    """Decides per update whether to apply it, and raises :class:`NonFiniteError` on NaN/Inf.

    ``any_rank`` (under DDP) turns a local flag into "some rank saw one", so all ranks skip together.
    """

    def __init__(self, on_nan: str = "raise", check_every: int = 50,
                 any_rank: Callable[[bool], bool] | None = None):
        self.on_nan = check_choice("trainer.on_nan", on_nan, ON_NAN)
        self.check_every = check_int("trainer.nan_check_every", check_every, 1)
        self.any_rank = any_rank
        self.unchecked: list[tuple[str, int, torch.Tensor]] = []  # (phase, step, loss) since the last verify

    @property
    def deferred(self) -> bool:
        return self.on_nan == "raise" and self.check_every > 1

    def admit(self, phase: str, step: int, loss: torch.Tensor, enabled: Sequence[torch.nn.Parameter]) -> bool:
        """Whether to apply this update; under deferred checking, only records it for :meth:`verify`."""
        if self.deferred:
            # The loss only: a non-finite gradient poisons the weights it is stepped into (Adam, SGD),
            # and verify checks those, so no per-update gradient norm is needed.
            self.unchecked.append((phase, step, loss))
            return True
        grads = [p.grad for p in enabled if p.grad is not None]
        norm = total_norm(grads) if grads else None
        bad = not all_finite([loss] if norm is None else [loss, norm])  # one host sync for both
        if self.on_nan == "raise":  # check_every == 1: before the optimizer step, so the weights stay finite
            if bad:
                what = f"loss {loss.item()}" if not torch.isfinite(loss) else f"gradient (norm {norm.item()})"
                raise non_finite(f"{what} in phase '{phase}' at step {step}")
            return True
        if self.any_rank is not None:
            bad = self.any_rank(bad)  # losses are per rank: all ranks must skip together
        return not bad

    def verify(self, networks: Sequence[Network]) -> None:
        """Raise :class:`NonFiniteError` if an update recorded since the last call was non-finite.

        One host sync checks every recorded loss and the weights of every network. The error names
        the first non-finite loss, or, if every loss was finite, the network whose weights a
        non-finite gradient reached. A non-finite gradient behind a finite loss also makes the next
        loss non-finite, so the named update may be one after it; ``nan_check_every=1`` checks every
        gradient before its step. Gradients are all-reduced under DDP, so every rank finds
        non-finite weights at the same check.
        """
        records, self.unchecked = self.unchecked, []
        if not records:
            return
        weight_norms = [total_norm(n.all_params) for n in networks]
        if all_finite([loss for _, _, loss in records] + weight_norms):
            return
        hint = f"the first since step {records[0][1]}; trainer.nan_check_every=1 checks each gradient too"
        for name, step, loss in records:
            if not torch.isfinite(loss):
                raise non_finite(f"loss {loss.item()} in phase '{name}' at step {step} ({hint})")
        bad = next(n.name for n, norm in zip(networks, weight_norms) if not torch.isfinite(norm))
        raise non_finite(f"weights of '{bad}' after steps {records[0][1]}-{records[-1][1]}, whose losses were "
                         "finite (a gradient was not; trainer.nan_check_every=1 stops at the exact update)")


def non_finite(what: str) -> NonFiniteError:
    return NonFiniteError(f"non-finite {what}; no checkpoint holds it. Lower the learning rate, or set "
                          "trainer.on_nan=skip")


def total_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all of ``tensors`` together, on their device (no host sync)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(list(tensors))))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """One host sync for many 0-d tensors (losses, norms); converting each first costs ops per tensor."""
    try:
        stacked = torch.stack(tensors)  # promotes dtypes; fails only on mixed shapes or devices
    except RuntimeError:
        stacked = torch.stack([t.float().reshape(()).to(tensors[0].device) for t in tensors])
    return bool(torch.isfinite(stacked).all())


def grad_norms(phase, unscale: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    """``grad_norm/<network>/<group>`` of the phase's active groups (device tensors, no host sync)."""
    out = {}
    for net in phase.networks:
        active = phase.groups[net.name]
        for group in net.trainable_groups:
            if active is not None and group.name not in active:
                continue
            grads = [p.grad for p in group.params if p.grad is not None]
            if grads:
                out[f"grad_norm/{net.name}/{group.name}"] = unscale(total_norm(grads))
    return out
