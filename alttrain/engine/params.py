"""Named parameter groups: choose what an optimizer updates by name pattern.

The PyTorch spelling of TF1's three answers:

* ``trainable=False``       -> ``p.requires_grad_(False)`` before building, or a group with ``frozen: true``
* ``minimize(var_list=...)`` -> ``torch.optim.SGD([w, b], ...)``: an explicit list
* ``get_collection(scope=)`` -> a group whose patterns select ``named_parameters()`` by name

A pattern is matched against the *whole* dotted name (anchored at both ends), fnmatch-style:
``blocks.1.*`` matches ``blocks.1.weight`` but never ``blocks.10.weight``; ``*.bias`` matches every
bias. ``re:<regex>`` is a regular expression that must match the full name.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alttrain.errors import ParamGroupError

REGEX_PREFIX = "re:"


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Turn a glob (or ``re:`` regex) into a regex that must match the full parameter name."""
    if not isinstance(pattern, str) or not pattern:
        raise ParamGroupError(f"parameter pattern must be a non-empty string, got {pattern!r}")
    if pattern.startswith(REGEX_PREFIX):
        source = pattern[len(REGEX_PREFIX):]
    else:
        # fnmatch.translate anchors the end; fullmatch anchors the start. '*' may cross dots, so
        # '*.bias' reaches nested modules, while 'blocks.1.*' cannot reach 'blocks.10.*'.
        source = fnmatch.translate(pattern)
    try:
        return re.compile(source)
    except re.error as exc:
        raise ParamGroupError(f"bad regular expression in pattern {pattern!r}: {exc}") from None


def match_names(patterns: Sequence[str], names: Iterable[str]) -> list[str]:
    """Names (in the given order) that match at least one pattern."""
    compiled = [compile_pattern(p) for p in patterns]
    return [n for n in names if any(c.fullmatch(n) for c in compiled)]


@dataclass(frozen=True)
class GroupSpec:
    """One named group as declared in YAML: patterns, a frozen flag, optimizer options."""

    name: str
    params: tuple[str, ...]
    frozen: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], index: int) -> GroupSpec:
        if not isinstance(raw, Mapping):
            raise ParamGroupError(f"param group #{index} must be a mapping such as "
                                  f"{{name: all, params: ['*']}}, got {raw!r}")
        raw = dict(raw)
        name = raw.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ParamGroupError(f"param group #{index} needs a 'name' (a non-empty string)")
        patterns = raw.pop("params", None)
        if isinstance(patterns, str):
            patterns = [patterns]
        # A Sequence check, not a list check: Hydra hands over ListConfig. A mapping or a number
        # must not slip through as "patterns" (a dict would be read as its keys).
        if (not isinstance(patterns, Sequence) or not patterns
                or not all(isinstance(p, str) for p in patterns)):
            raise ParamGroupError(
                f"param group '{name}' needs 'params': a list of name patterns such as ['*.weight']"
            )
        frozen = raw.pop("frozen", False)
        if not isinstance(frozen, bool):
            raise ParamGroupError(f"param group '{name}': 'frozen' must be true or false, got {frozen!r}")
        return cls(name=name, params=tuple(patterns), frozen=frozen, options=raw)


@dataclass
class ResolvedGroup:
    """A group after matching: the parameters it owns, by name, in module order."""

    name: str
    names: list[str]
    params: list[nn.Parameter]
    frozen: bool
    options: dict[str, Any]

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params)


def resolve_groups(module: nn.Module, specs: Sequence[GroupSpec | Mapping[str, Any]],
                   owner: str = "model") -> list[ResolvedGroup]:
    """Match group patterns against ``module.named_parameters()`` and validate the partition.

    Every trainable parameter (``requires_grad=True`` now) must be matched by exactly one group.
    Parameters the user froze beforehand are TF's ``trainable=False``: never selected.
    Raises :class:`ParamGroupError` naming the groups and parameters involved.
    """
    specs = [s if isinstance(s, GroupSpec) else GroupSpec.from_dict(s, i) for i, s in enumerate(specs)]
    if not specs:
        raise ParamGroupError(f"{owner}: no param groups declared; add at least one, e.g. "
                              "{name: all, params: ['*']}")
    seen_names = set()
    for spec in specs:
        if spec.name in seen_names:
            raise ParamGroupError(f"{owner}: two param groups are named '{spec.name}'; names must be unique")
        seen_names.add(spec.name)

    named = list(module.named_parameters())
    trainable = [(n, p) for n, p in named if p.requires_grad]
    user_frozen = [n for n, p in named if not p.requires_grad]
    owner_of: dict[str, str] = {}
    groups = []
    for spec in specs:
        compiled = [compile_pattern(p) for p in spec.params]
        for pattern, regex in zip(spec.params, compiled):
            if not any(regex.fullmatch(n) for n, _ in trainable):
                frozen_hits = [n for n in user_frozen if regex.fullmatch(n)]
                hint = (f" (it matches only parameters already frozen with requires_grad=False: "
                        f"{', '.join(frozen_hits[:5])})" if frozen_hits else "")
                raise ParamGroupError(
                    f"{owner}: pattern '{pattern}' of param group '{spec.name}' matches no trainable "
                    f"parameter{hint}; names look like: {_examples(named)}")
        names, params = [], []
        for n, p in trainable:
            if any(r.fullmatch(n) for r in compiled):
                if n in owner_of:
                    raise ParamGroupError(
                        f"{owner}: parameter '{n}' is matched by two param groups, "
                        f"'{owner_of[n]}' and '{spec.name}' (overlap); make the patterns disjoint")
                owner_of[n] = spec.name
                names.append(n)
                params.append(p)
        groups.append(ResolvedGroup(spec.name, names, params, spec.frozen, dict(spec.options)))

    uncovered = [n for n, _ in trainable if n not in owner_of]
    if uncovered:
        shown = ", ".join(uncovered[:10]) + (f", ... ({len(uncovered)} in all)" if len(uncovered) > 10 else "")
        raise ParamGroupError(
            f"{owner}: trainable parameters matched by no param group (not covered): {shown}; "
            "add a group for them, mark them frozen: true, or set requires_grad=False beforehand")
    return groups


def _examples(named: Sequence[tuple[str, torch.Tensor]]) -> str:
    names = [n for n, _ in named]
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") if names else "(module has no parameters)"


def apply_frozen(groups: Sequence[ResolvedGroup]) -> None:
    """Switch ``requires_grad`` off for every parameter of a ``frozen: true`` group."""
    for group in groups:
        if group.frozen:
            for p in group.params:
                p.requires_grad_(False)


def torch_param_groups(groups: Sequence[ResolvedGroup]) -> list[dict[str, Any]]:
    """Param-group dicts for a ``torch.optim`` constructor; each keeps its ``name``.

    Frozen groups are left out: an optimizer that never sees a parameter cannot move it
    (weight decay and momentum included).
    """
    return [{"params": g.params, "name": g.name, **g.options} for g in groups if not g.frozen]


def summary_table(groups: Sequence[ResolvedGroup], optimizer: torch.optim.Optimizer | None = None,
                  title: str = "") -> str:
    """A fixed-width table of resolved groups for logs: group, #tensors, #params, lr, frozen."""
    lrs = {}
    if optimizer is not None:
        lrs = {pg.get("name"): pg.get("lr") for pg in optimizer.param_groups}
    rows = [("group", "tensors", "params", "lr", "frozen")]
    for g in groups:
        lr = lrs.get(g.name, g.options.get("lr"))
        rows.append((g.name, str(len(g.params)), f"{g.numel:,}", "-" if g.frozen or lr is None else f"{lr:g}",
                     "yes" if g.frozen else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title] if title else []
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
