"""EoRA: low-rank compensation of any compression error, in the eigenspace of the inputs.

Liu et al., "EoRA: Training-free Compensation for Compressed LLM with Eigenspace Low-Rank
Approximation", 2024 (https://arxiv.org/abs/2410.21271).

A stage that follows any other stage of the same pass (pruning, quantization, factorization).
For each projection, the error ``E = W - W_c`` between the weight before the pass
(:attr:`LayerView.original`) and what the compressed module computes is projected into the
eigenspace of ``X^T X`` (scaled by the square roots of the eigenvalues), truncated by SVD to
``rank`` and mapped back (:func:`netslim.ops.lowrank.eigen_factors`). The module is wrapped
as ``base(x) + up(down(x))`` (:class:`~netslim.nn.lowrank.LowRankCompensated`), so a quantized
or sparse base keeps its storage format.

Recipe:
    - method: gptq
      bits: 3
    - method: eora
      rank: 32
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from netslim.engine.stats import LayerStats, Stat
from netslim.methods.base import FLOAT, LayerView, MethodConfig
from netslim.methods.registry import register_method
from netslim.models.adapter import linear_weight
from netslim.nn.lowrank import LowRankCompensated
from netslim.ops.lowrank import eigen_factors


class EoRAConfig(MethodConfig):
    """EoRA settings.

    Attributes:
        rank: Rank of each layer's correction (capped at the layer's smaller side).
        damp: Regularization of ``X^T X``: its eigenvalues below ``damp`` times the largest are
            raised to that floor.
    """

    method: Literal["eora"] = "eora"
    rank: int = Field(default=32, ge=1)
    damp: float = Field(default=1e-6, gt=0.0, lt=1.0)
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})
    needs_original: ClassVar[bool] = True
    accepts: ClassVar[frozenset[str]] = frozenset({FLOAT, "quantized", "factorized_linear"})

    def produces(self) -> str:
        """Layers with a low-rank correction beside them."""
        return "lowrank_compensated"


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The (out, in) matrix a (possibly compressed) projection computes."""
    if hasattr(module, "dequantize"):
        return module.dequantize()
    if hasattr(module, "dense_weight"):
        return module.dense_weight()
    return linear_weight(module)


@register_method("eora", EoRAConfig)
def eora(layer: LayerView, stats: LayerStats, cfg: EoRAConfig) -> dict:
    """Wrap ``layer`` with the rank-``cfg.rank`` eigenspace approximation of its error."""
    compressed = effective_weight(layer.module).float()
    error = layer.original.to(compressed.device, torch.float32) - compressed
    rank = min(cfg.rank, *error.shape)
    factors = eigen_factors(error, rank, stats.hessian, cfg.damp)
    dtype = layer.original.dtype
    layer.replace(LowRankCompensated.around(layer.module, factors.up.to(dtype), factors.down.to(dtype)))
    return {"compensation_rank": rank}
