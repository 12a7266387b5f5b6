"""What flows into a step: real batches (samples and optional labels, or named fields) and the latent prior."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from alttrain.checks import check_int, is_int
from alttrain.errors import ConfigError


class Batch:
    """A real batch: ``samples`` ``(N, *sample_shape)`` and, for labelled data, ``labels`` ``(N,)`` int64;
    or, for data with several parts, named ``fields`` (``A`` and ``B`` of two domains, ``input`` and
    ``target`` of pairs), each ``(N, ...)``.

    ``real, labels = batch`` unpacks ``(samples, labels)`` as it always has; ``batch["A"]`` reads a field
    (``batch["samples"]`` and ``batch["labels"]`` work too). A batch with fields has no ``samples``
    unless its data set names one. ``DataLoader`` pins it through :meth:`pin_memory`.
    """

    __slots__ = ("samples", "labels", "fields")

    def __init__(self, samples: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 fields: Mapping[str, torch.Tensor] | None = None):
        self.samples, self.labels = samples, labels
        self.fields: dict[str, torch.Tensor] = dict(fields) if fields else {}
        if samples is None and not self.fields:
            raise ValueError("a Batch needs samples or at least one named field")

    @classmethod
    def of(cls, **fields: torch.Tensor) -> Batch:
        """A batch of named fields: ``Batch.of(A=a, B=b)``."""
        return cls(fields=fields)

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        yield self.samples
        yield self.labels

    def __getitem__(self, key: str | int) -> torch.Tensor | None:
        if isinstance(key, int):
            return (self.samples, self.labels)[key]
        if key in self.fields:
            return self.fields[key]
        if key in ("samples", "labels"):
            return getattr(self, key)
        raise KeyError(f"the batch has no field '{key}'; it has {', '.join(self.names) or 'none'}")

    def __contains__(self, key: object) -> bool:
        return key in self.fields or (key in ("samples", "labels") and getattr(self, str(key)) is not None)

    @property
    def names(self) -> tuple[str, ...]:
        """The batch's named fields (empty for a ``(samples, labels)`` batch)."""
        return tuple(self.fields)

    @property
    def size(self) -> int:
        """Items in the batch: the first dimension of ``samples``, else of the first field."""
        first = self.samples if self.samples is not None else next(iter(self.fields.values()))
        return first.shape[0]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
        return Batch(None if self.samples is None else fn(self.samples),
                     None if self.labels is None else fn(self.labels),
                     {k: fn(v) for k, v in self.fields.items()})

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self, *args: Any) -> Batch:
        """Page-locked copies (called by ``DataLoader(pin_memory=True)``)."""
        return self._map(lambda t: t.pin_memory(*args))

    def __repr__(self) -> str:
        parts = [f"{k}={tuple(v.shape)}" for k, v in (("samples", self.samples), ("labels", self.labels),
                                                          *self.fields.items()) if v is not None]
        return f"Batch({', '.join(parts)})"


@dataclass(eq=False)
class LatentPrior:
    """``z ~ N(0, I)`` of ``shape`` per sample and, for conditional runs, class labels.

    ``num_classes`` set: every fake is drawn with a label, uniform over the classes or from
    ``class_probs`` (e.g. the data's class frequencies). Samples, metrics and every phase draw
    conditions through this one object. ``z`` comes first and labels second, from the global RNG of
    ``device``, so an unconditional run draws exactly what ``torch.randn(n, *shape)`` would.
    """

    shape: tuple[int, ...]
    num_classes: int | None = None
    class_probs: torch.Tensor | None = field(default=None, repr=False)
    device: torch.device = torch.device("cpu")

    def __post_init__(self) -> None:
        self.shape = tuple(check_int("model.latent_shape entries", d, 1) for d in self.shape)
        if not self.shape:
            raise ConfigError("the latent shape is empty; set model.latent_shape, e.g. [64] or [100, 1, 1]")
        if self.num_classes is not None:
            check_int("the number of classes", self.num_classes, 1)
        if self.class_probs is not None:
            probs = torch.as_tensor(self.class_probs, dtype=torch.float64)
            if self.num_classes is None or probs.shape != (self.num_classes,) or not bool((probs >= 0).all()) \
                    or not probs.sum() > 0:
                raise ConfigError(f"class probabilities must be {self.num_classes} numbers >= 0 with a positive sum")
            self.class_probs = (probs / probs.sum()).to(torch.float32)
        self.device = torch.device(self.device)
        self._probs_on_device = None if self.class_probs is None else self.class_probs.to(self.device)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def latent(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        device = self.device if generator is None else generator.device
        return torch.randn(n, *self.shape, device=device, generator=generator)

    def labels(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """``n`` class labels, or ``None`` in an unconditional run."""
        if self.num_classes is None:
            return None
        device = self.device if generator is None else generator.device
        if self._probs_on_device is None:
            return torch.randint(self.num_classes, (n,), device=device, generator=generator)
        probs = self._probs_on_device if generator is None else self.class_probs.to(device)
        return torch.multinomial(probs, n, replacement=True, generator=generator)

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = self.latent(n, generator)
        return z, self.labels(n, generator)

    def to(self, device: torch.device) -> LatentPrior:
        return LatentPrior(self.shape, self.num_classes, self.class_probs, device)


def infer_latent_shape(modules: Sequence[torch.nn.Module]) -> tuple[int, ...] | None:
    """``(latent_dim,)`` shared by every module that has an integer ``latent_dim``; None when none has one."""
    dims = {m.latent_dim for m in modules if is_int(getattr(m, "latent_dim", None))}
    if len(dims) > 1:
        raise ConfigError(f"the networks disagree on latent_dim ({', '.join(map(str, sorted(dims)))}); set "
                          "model.latent_shape to say which z the prior draws")
    return (dims.pop(),) if dims else None
