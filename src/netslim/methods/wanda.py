"""Wanda: prune by weight magnitude times input activation norm, compared within each row.

Sun et al., "A Simple and Effective Pruning Approach for Large Language Models", 2023
(https://arxiv.org/abs/2306.11695). The score of weight W_ij is |W_ij| * ||X_j||_2, where
||X_j|| is the L2 norm of input channel j over all calibration tokens. Weights compete
within each output row (``compare: row``, the paper's choice); for N:M patterns within each
group of M consecutive inputs. No weight update.

Recipe:
    - method: wanda
      ratio: 0.5             # or pattern: "2:4"
"""

from __future__ import annotations

from typing import ClassVar, Literal

from netslim.engine.stats import LayerStats, Stat
from netslim.methods.base import LayerView
from netslim.methods.pruning import PruningConfig, PruningHandler, apply_scores
from netslim.methods.registry import register_method


class WandaConfig(PruningConfig):
    """Wanda settings (see :class:`PruningConfig`)."""

    method: Literal["wanda"] = "wanda"
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})


@register_method("wanda", WandaConfig, base=PruningHandler)
def wanda(layer: LayerView, stats: LayerStats, cfg: WandaConfig) -> dict:
    """Score = |W| * ||X||, broadcast over output rows."""
    scores = layer.weight.abs().float() * stats.act_norm.to(layer.weight.device).unsqueeze(0)
    return apply_scores(layer, scores, cfg)
