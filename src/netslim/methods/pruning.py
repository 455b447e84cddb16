"""What unstructured and N:M pruning methods share: the config and mask application.

A pruning method computes a score per weight (larger = keep) and calls
:func:`apply_scores`, which picks the mask for the config's pattern and comparison group,
zeroes the pruned weights and returns the layer's report fields.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from netslim.methods.base import LayerView, MethodConfig
from netslim.ops.masks import layer_mask, nm_mask, parse_pattern, row_mask


class PruningConfig(MethodConfig):
    """Settings shared by magnitude, Wanda and later SparseGPT.

    Attributes:
        sparsity: Fraction of weights to remove, in (0, 1). With an ``N:M`` pattern it is
            implied (``1 - N/M``) and may be omitted.
        pattern: ``"unstructured"`` or ``"N:M"`` (N non-zeros in every M consecutive inputs).
        compare: For unstructured sparsity, whether weights compete within each output row or
            across the whole layer.
    """

    sparsity: float = Field(default=0.5, gt=0.0, lt=1.0)
    pattern: str = "unstructured"
    compare: Literal["row", "layer"] = "row"

    @model_validator(mode="after")
    def _check_pattern(self) -> PruningConfig:
        nm = parse_pattern(self.pattern)  # raises a ConfigError (a ValueError) on a bad pattern
        if nm is not None and "sparsity" in self.model_fields_set:
            implied = 1 - nm[0] / nm[1]
            if abs(self.sparsity - implied) > 1e-9:
                raise ValueError(
                    f"sparsity={self.sparsity} contradicts pattern {self.pattern} "
                    f"(which implies {implied:g}); drop sparsity or change the pattern"
                )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for a semi-structured pattern, else ``None``."""
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """The sparsity every pruned layer ends with."""
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else self.sparsity


def keep_mask(scores: torch.Tensor, cfg: PruningConfig, sparsity: float | None = None) -> torch.Tensor:
    """Boolean keep-mask for ``scores`` under the config's pattern and comparison group."""
    nm = cfg.nm
    if nm is not None:
        return nm_mask(scores, *nm)
    sparsity = cfg.sparsity if sparsity is None else sparsity
    return (row_mask if cfg.compare == "row" else layer_mask)(scores, sparsity)


def apply_scores(layer: LayerView, scores: torch.Tensor, cfg: PruningConfig) -> dict:
    """Zero the weights of ``layer`` whose scores lose, and report the pattern used."""
    mask = keep_mask(scores, cfg)
    layer.weight.mul_(mask.to(layer.weight.dtype))
    return {"pattern": cfg.pattern}
