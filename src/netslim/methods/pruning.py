"""What unstructured and N:M pruning methods share: the config and mask application.

A pruning method computes a score per weight (larger = keep) and calls
:func:`apply_scores`, which picks the mask for the config's pattern and comparison group,
zeroes the pruned weights and returns the layer's report fields.

Layer-wise allocation (``allocation: owl``, any unstructured pruning method): before the
pass, :meth:`PruningHandler.plan` sweeps the dense model once with the calibration data,
measures each block's share of outlier Wanda scores (:mod:`netslim.ops.owl`) and returns a
copy of the config with ``block_ratios`` spelled out; each layer then prunes to its
block's sparsity, recorded as ``target_sparsity`` in the layer report.

Recipe:
    - method: wanda
      ratio: 0.7
      allocation: owl        # owl_threshold: 5, owl_lambda: 0.08
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from netslim.engine.stats import Stat
from netslim.errors import ConfigError
from netslim.methods.base import Handler, LayerView, MethodConfig, ModelShape, Sweep
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.ops.masks import layer_mask, nm_mask, parse_pattern, row_mask
from netslim.ops.owl import outlier_ratio, owl_sparsities


class PruningConfig(MethodConfig):
    """Settings shared by magnitude, Wanda and later SparseGPT.

    Attributes:
        ratio: Fraction of weights to remove (the sparsity), in (0, 1). With an ``N:M``
            pattern it is implied (``1 - N/M``) and may be omitted.
        pattern: ``"unstructured"`` or ``"N:M"`` (N non-zeros in every M consecutive inputs).
        compare: For unstructured sparsity, whether weights compete within each output row or
            across the whole layer.
        allocation: ``uniform`` (every block at ``ratio``) or ``owl`` (per-block sparsity
            from outlier ratios, averaging ``ratio``; needs calibration data, even for
            magnitude pruning).
        owl_threshold: OWL's M: a score is an outlier above M times its block's mean score.
        owl_lambda: OWL's lambda: the largest deviation of a block from ``ratio``.
        block_ratios: Ratio (sparsity) per block index; filled in by the OWL planning sweep, may
            also be given by hand (then ``allocation`` is not consulted).
    """

    ratio: float = 0.5
    pattern: str = "unstructured"
    compare: Literal["row", "layer"] = "row"
    allocation: Literal["uniform", "owl"] = "uniform"
    owl_threshold: float = Field(default=5.0, gt=0.0)
    owl_lambda: float = Field(default=0.08, ge=0.0, lt=0.5)
    block_ratios: tuple[float, ...] | None = None

    @field_validator("ratio")
    @classmethod
    def _ratio_in_range(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("must be in (0, 1), e.g. 0.5 to remove half of the weights")
        return value

    @model_validator(mode="after")
    def _check_pattern(self) -> PruningConfig:
        nm = parse_pattern(self.pattern)  # raises a ConfigError (a ValueError) on a bad pattern
        if nm is not None and "ratio" in self.model_fields_set:
            implied = 1 - nm[0] / nm[1]
            if abs(self.ratio - implied) > 1e-9:
                raise ValueError(
                    f"ratio={self.ratio} contradicts pattern {self.pattern} "
                    f"(which implies {implied:g}); drop ratio or change the pattern"
                )
        if nm is not None and (self.allocation != "uniform" or self.block_ratios is not None):
            raise ValueError(f"pattern {self.pattern} fixes every layer's sparsity; use allocation: uniform")
        if self.allocation == "owl" and not 0 < self.ratio - self.owl_lambda <= self.ratio + self.owl_lambda < 1:
            raise ValueError(f"owl_lambda={self.owl_lambda} must keep ratio {self.ratio} +/- lambda inside (0, 1)")
        if self.block_ratios is not None and not all(0.0 <= s < 1.0 for s in self.block_ratios):
            raise ValueError("block_ratios values must be in [0, 1)")
        return self

    @property
    def needs_calibration(self) -> bool:
        """OWL's planning sweep needs data even for a data-free score (magnitude)."""
        return bool(self.needs) or (self.allocation == "owl" and self.block_ratios is None)

    @property
    def nm(self) -> tuple[int, int] | None:
        """``(N, M)`` for a semi-structured pattern, else ``None``."""
        return parse_pattern(self.pattern)

    @property
    def target_sparsity(self) -> float:
        """The sparsity every pruned layer ends with."""
        nm = self.nm
        return 1 - nm[0] / nm[1] if nm else self.ratio

    def preflight(self, shape: ModelShape) -> None:
        """N:M needs every pruned layer's input width divisible by M; ``block_ratios`` one
        entry per block."""
        super().preflight(shape)
        nm = self.nm
        for name in shape.touched(self) if nm else ():
            width = shape.layers[name].in_features
            if width is not None and width % nm[1]:
                raise ConfigError(f"{self.method}: pattern {self.pattern} needs input widths divisible by {nm[1]}, "
                                  f"but {name} has {width} inputs; use another pattern or ignore that layer")
        if self.block_ratios is not None and len(self.block_ratios) != shape.num_blocks:
            raise ConfigError(f"{self.method}: block_ratios has {len(self.block_ratios)} entries; "
                              f"the model has {shape.num_blocks} blocks")

    def sparsity_for(self, block_index: int) -> float:
        """The unstructured sparsity of block ``block_index``.

        Raises:
            ConfigError: if ``block_ratios`` has no entry for the block.
        """
        if self.block_ratios is None:
            return self.ratio
        if block_index >= len(self.block_ratios):
            raise ConfigError(f"block_ratios has {len(self.block_ratios)} entries; the model has more blocks")
        return self.block_ratios[block_index]


class PruningHandler(Handler):
    """The planning hook of every pruning method; each registers its ``act_layer`` on it."""

    def plan(self, cfg: PruningConfig, adapter: ModelAdapter, sweep: Sweep | None) -> PruningConfig:
        """For ``allocation: owl``, sweep the model once and fix ``block_ratios``."""
        if cfg.allocation == "uniform" or cfg.block_ratios is not None:
            return cfg
        if sweep is None:
            raise ConfigError("allocation: owl needs calibration data; pass calibration windows")
        ratios = []
        for index, stats in sweep(frozenset({Stat.ACT_NORM})):
            scores = [
                linear_weight(module).abs().float() * stats.layers[name].act_norm.to(module.weight.device).unsqueeze(0)
                for name, module in adapter.block_linears(index).items()
                if name in stats.layers and not cfg.ignores(name)
            ]
            ratios.append(outlier_ratio(scores, cfg.owl_threshold))
        sparsities = owl_sparsities(ratios, cfg.ratio, cfg.owl_lambda)
        return cfg.model_copy(update={"block_ratios": tuple(sparsities)})


def keep_mask(scores: torch.Tensor, cfg: PruningConfig, sparsity: float | None = None) -> torch.Tensor:
    """Boolean keep-mask for ``scores`` under the config's pattern and comparison group."""
    nm = cfg.nm
    if nm is not None:
        return nm_mask(scores, *nm)
    sparsity = cfg.ratio if sparsity is None else sparsity
    return (row_mask if cfg.compare == "row" else layer_mask)(scores, sparsity)


def apply_scores(layer: LayerView, scores: torch.Tensor, cfg: PruningConfig) -> dict:
    """Zero the weights of ``layer`` whose scores lose, and report the pattern used."""
    sparsity = cfg.sparsity_for(layer.block_index)
    mask = keep_mask(scores, cfg, sparsity)
    layer.weight.mul_(mask.to(layer.weight.dtype))
    return {"pattern": cfg.pattern, "target_sparsity": cfg.target_sparsity if cfg.nm else sparsity}
