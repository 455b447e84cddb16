"""The dependency graph: which channels of which layers must be removed together.

A :class:`DependencyGraph` holds *uses*: (module name, side) -> one slot label per channel of
that side (labels may repeat: the columns of a Linear after a flatten, the rows of one head).
Slots united by the propagation (:mod:`netslim.graph.propagate`) form units; units that touch
exactly the same uses form a :class:`Group` (a convolution's output channels together with
its batch norm, the residual stream of a stage, the heads of one attention module).

Graphs are built by :func:`netslim.graph.build.build_graph` (tracing or, for encoders,
:mod:`netslim.graph.hf`), which imports this module, never the other way round.

Example:
    >>> graph = build_graph(model, (torch.randn(1, 3, 32, 32),))
    >>> group = graph.groups()[0]
    >>> graph.prune({group.units[0]})   # removes that channel everywhere at once
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import nn

from netslim.graph.plan import Cut
from netslim.graph.pruners import cut, zero
from netslim.graph.slots import NONE, SlotTable

UseKey = tuple[str, str]  # (module name, "in" | "out")


@dataclass(frozen=True)
class Group:
    """Channels coupled across layers.

    Attributes:
        name: The first module that produces these channels.
        units: Root slot ids, one per removable unit (a channel, a head, a conv group).
        members: Every (module, side) the units touch.
    """

    name: str
    units: tuple[int, ...]
    members: tuple[UseKey, ...]


class DependencyGraph:
    """Uses and slots of one model; see the module docstring."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.slots = SlotTable()
        self.uses: dict[UseKey, torch.Tensor] = {}
        self._roots: dict[UseKey, torch.Tensor] | None = None

    def add_use(self, name: str, side: str, labels: torch.Tensor) -> None:
        """Record that ``name``'s ``side`` carries ``labels`` (a module called twice is united)."""
        labels = labels.reshape(-1).clone()
        key = (name, side)
        if key in self.uses:
            self.slots.union_pairs(self.uses[key], labels)
        else:
            self.uses[key] = labels
        self._roots = None

    def fix_modules(self, patterns: tuple[str, ...]) -> None:
        """Fix every unit touching a module whose name matches an ``fnmatch`` pattern."""
        for (name, _), labels in self.uses.items():
            if any(fnmatch.fnmatchcase(name, p) for p in patterns):
                self.slots.fix(labels)
        self._roots = None

    def roots(self) -> dict[UseKey, torch.Tensor]:
        """Root slot per channel of every use (``NONE`` where not prunable)."""
        if self._roots is None:
            self._roots = {}
            for key, labels in self.uses.items():
                roots = self.slots.roots(labels)
                fixed = torch.tensor([r != NONE and self.slots.is_fixed(r) for r in roots.tolist()], dtype=torch.bool)
                self._roots[key] = roots.masked_fill(fixed, NONE)
        return self._roots

    def groups(self) -> list[Group]:
        """Prunable groups, in the order their first use was recorded."""
        touched: dict[int, list[UseKey]] = defaultdict(list)
        for key, roots in self.roots().items():
            for r in dict.fromkeys(roots.tolist()):
                if r != NONE:
                    touched[r].append(key)
        by_members: dict[tuple[UseKey, ...], list[int]] = defaultdict(list)
        for unit, members in touched.items():
            by_members[tuple(members)].append(unit)
        groups = []
        for members, units in by_members.items():
            producers = [name for name, side in members if side == "out"] or [members[0][0]]
            groups.append(Group(producers[0], tuple(units), members))
        return groups

    def _each_cut(self, units: set[int]):
        for (name, side), roots in self.roots().items():
            removed = torch.tensor([r in units for r in roots.tolist()], dtype=torch.bool)
            if removed.any():
                yield name, side, removed

    def prune(self, units: set[int]) -> list[Cut]:
        """Remove ``units`` from the model in place; returns the cuts made (for a plan)."""
        cuts = []
        for name, side, removed in list(self._each_cut(units)):
            keep = (~removed).nonzero().flatten().tolist()
            cut(self.model.get_submodule(name), side, keep, name)
            cuts.append(Cut(name, side, tuple(keep), int(removed.numel())))
        self.uses = {}  # the graph describes the model before the cuts: invalidate it
        self._roots = None
        return cuts

    def zero(self, units: set[int]) -> int:
        """Zero the parameters ``prune(units)`` would remove; returns how many elements."""
        return sum(
            zero(self.model.get_submodule(name), side, removed.nonzero().flatten().tolist())
            for name, side, removed in self._each_cut(units)
        )

