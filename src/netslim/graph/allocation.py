"""Which units to remove for a pruning ratio: uniform or global allocation, with rounding.

Both allocations respect, per group, ``max_group_ratio`` and ``round_to`` (the number of kept
units is a multiple of it, and at least one unit is kept).

Example:
    >>> select_units(groups, scores, 0.3, ChannelPruneConfig(ratio=0.3, measure="macs"))
    {17, 18, 42, ...}
"""

from __future__ import annotations

import math

import torch

from netslim.graph.dependency import Group


def _kept(n: int, removed: int, cfg) -> int:
    """Units kept in a group of ``n`` when ``removed`` are wanted out, after the limits."""
    kept = max(n - removed, math.ceil(n * (1 - cfg.max_group_ratio)), 1)
    if n <= cfg.round_to:
        return n
    return min(n, math.ceil(kept / cfg.round_to) * cfg.round_to)


def select_units(groups: list[Group], scores: list[torch.Tensor], ratio: float, cfg) -> set[int]:
    """Units to remove so that about ``ratio`` of the units go (uniformly or globally)."""
    if cfg.allocation == "uniform":
        wanted = [int(ratio * len(g.units)) for g in groups]
    else:
        wanted = _global_counts(scores, ratio)
    chosen: set[int] = set()
    for group, score, want in zip(groups, scores, wanted):
        drop = len(group.units) - _kept(len(group.units), want, cfg)
        order = torch.argsort(score, stable=True)[:drop].tolist()
        chosen.update(group.units[i] for i in order)
    return chosen


def _global_counts(scores: list[torch.Tensor], ratio: float) -> list[int]:
    """How many units each group loses when the lowest ``ratio`` of all normalized scores go."""
    normalized = [s / s.mean().clamp_min(1e-12) for s in scores]
    flat = torch.cat(normalized)
    cut = int(ratio * flat.numel())
    if cut == 0:
        return [0] * len(scores)
    threshold = torch.sort(flat).values[cut - 1]
    return [int((s <= threshold).sum()) for s in normalized]
