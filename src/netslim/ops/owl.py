"""OWL: layer-wise sparsity from each block's share of outlier weights.

Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
LLMs to High Sparsity", 2023 (https://arxiv.org/abs/2310.05175). A weight is an outlier when
its Wanda score ``|W_ij| * ||X_j||`` exceeds ``M`` times the mean score of its block (all
the block's projections pooled, as in the reference code). Blocks with more outliers are
pruned less.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def outlier_ratio(scores: Sequence[torch.Tensor], threshold: float) -> float:
    """Share of the pooled ``scores`` above ``threshold`` times their pooled mean."""
    total = sum(float(s.sum()) for s in scores)
    count = sum(s.numel() for s in scores)
    limit = threshold * total / max(count, 1)
    return sum(int((s > limit).sum()) for s in scores) / max(count, 1)


def owl_sparsities(ratios: Sequence[float], target: float, lam: float) -> list[float]:
    """Per-block sparsities from outlier ratios, averaging exactly ``target``.

    As in the reference code, the ratios are min-max scaled to ``[0, 2 * lam]`` and centred
    on their mean; a block's sparsity is ``target`` minus its centred value (more outliers,
    less pruning). When the distribution is skewed that could move a block further than
    ``lam`` from the target, so all deviations then shrink by one common factor: every
    sparsity stays in ``[target - lam, target + lam]`` (the paper's bound) and the mean and
    the ordering are unchanged. Equal ratios give the uniform allocation.
    """
    values = torch.tensor(list(ratios), dtype=torch.float64)
    spread = float(values.max() - values.min()) if len(values) else 0.0
    if spread == 0.0:
        return [target] * len(values)
    scaled = (values - values.min()) / spread * (2 * lam)
    deviation = scaled - scaled.mean()
    deviation *= min(1.0, lam / float(deviation.abs().max()))
    return [float(target - d) for d in deviation]
