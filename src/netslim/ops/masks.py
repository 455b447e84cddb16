"""Pruning masks from a score matrix. ``True`` means keep.

All functions take ``scores`` of shape (out_features, in_features), larger = more important,
and return a boolean keep-mask of the same shape. Ties are broken by position (the lower index
is pruned first), so results are deterministic.
"""

from __future__ import annotations

import torch

from netslim.errors import ConfigError


def _prune_lowest(scores: torch.Tensor, count: int, dim: int) -> torch.Tensor:
    """Keep-mask pruning the ``count`` lowest scores along ``dim``, ties to the lower index.

    A selection (``kthvalue``) instead of a full sort: several times faster on the large flat
    score vectors of layer-wise masks, and the same result as a stable ascending sort.
    """
    if count <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(count, dim=dim, keepdim=True).values
    below = scores < kth
    tied = scores == kth
    room = count - below.sum(dim, keepdim=True)  # how many of the tied scores are pruned too
    return ~(below | (tied & (tied.cumsum(dim) <= room)))


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``int(in_features * sparsity)`` lowest scores in every output row (Wanda)."""
    return _prune_lowest(scores, int(scores.shape[1] * sparsity), dim=1)


def layer_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune ``int(numel * sparsity)`` lowest scores over the whole matrix (layer-wise magnitude)."""
    flat = _prune_lowest(scores.reshape(1, -1), int(scores.numel() * sparsity), dim=1)
    return flat.view_as(scores)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest scores in every ``m`` consecutive inputs of each row.

    Raises:
        ConfigError: if ``in_features`` is not a multiple of ``m``.
    """
    rows, cols = scores.shape
    if cols % m:
        raise ConfigError(f"{n}:{m} sparsity needs in_features divisible by {m}, got {cols}")
    grouped = _prune_lowest(scores.reshape(rows, cols // m, m), m - n, dim=2)
    return grouped.view(rows, cols)


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"2:4"`` -> ``(2, 4)``.

    Raises:
        ConfigError: if the pattern is neither ``unstructured`` nor ``N:M`` with 0 < N < M.
    """
    if pattern == "unstructured":
        return None
    parts = pattern.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = (int(p) for p in parts)
        if 0 < n < m:
            return n, m
    raise ConfigError(f"pattern '{pattern}': use 'unstructured' or 'N:M' with 0 < N < M, e.g. '2:4'")
