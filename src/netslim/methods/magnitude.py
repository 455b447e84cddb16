"""Magnitude pruning: remove the weights of smallest absolute value.

Han et al., "Learning both Weights and Connections for Efficient Neural Networks", 2015
(https://arxiv.org/abs/1506.02626). Data-free. As in the Wanda paper's baseline, weights
compete across the whole layer by default (``compare: layer``).

Recipe:
    - method: magnitude
      ratio: 0.5             # or pattern: "2:4"
"""

from __future__ import annotations

from typing import Literal

from netslim.engine.stats import LayerStats
from netslim.methods.base import LayerView
from netslim.methods.pruning import PruningConfig, PruningHandler, apply_scores
from netslim.methods.registry import register_method


class MagnitudeConfig(PruningConfig):
    """Magnitude pruning settings (see :class:`PruningConfig`)."""

    method: Literal["magnitude"] = "magnitude"
    compare: Literal["row", "layer"] = "layer"


@register_method("magnitude", MagnitudeConfig, base=PruningHandler)
def magnitude(layer: LayerView, stats: LayerStats | None, cfg: MagnitudeConfig) -> dict:
    """Score = |W|."""
    return apply_scores(layer, layer.weight.abs().float(), cfg)
