"""SparseGPT: one-shot pruning with OBS weight reconstruction, optionally with quantization.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", 2023 (https://arxiv.org/abs/2301.00774). The columns of each layer are swept left
to right in blocks of 128 (:mod:`netslim.ops.obs`, shared with GPTQ). At the start of every
block the mask is chosen adaptively: the weights with the lowest OBS saliency
``w^2 / [H^-1]_ii`` across the block are pruned (for ``N:M``, the least salient ``M - N`` of
every ``M`` consecutive inputs of each row, chosen when the sweep reaches them). Every pruning
or rounding error is compensated on the columns not yet processed.

With ``bits`` set, kept weights are also rounded to a GPTQ grid inside the same sweep
(joint sparsity and quantization, section 3.5 of the paper) and the layer becomes a
:class:`netslim.nn.quantized.QuantizedLinear`; pruned weights are exactly zero codes.

``allocation: owl`` works as for every pruning method (:mod:`netslim.methods.pruning`).

Recipe:
    - method: sparsegpt
      ratio: 0.5             # or pattern: "2:4"
      bits: 4                # optional: joint 4-bit quantization of the kept weights
      group_size: 128
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from netslim.engine.stats import LayerStats, Stat
from netslim.methods.base import LayerView
from netslim.methods.pruning import PruningConfig, PruningHandler
from netslim.methods.registry import register_method
from netslim.methods.rtn import install_quantized
from netslim.ops.hessian import fix_dead_inputs, inverse_cholesky
from netslim.ops.obs import MaskRule, QuantRule, aligned_block_size, obs_sweep
from netslim.ops.quant import QuantizedWeight, check_grid


class SparseGPTConfig(PruningConfig):
    """SparseGPT settings (see :class:`PruningConfig` for ratio, pattern, allocation).

    Attributes:
        damp: Hessian dampening as a fraction of its mean diagonal.
        bits: Quantize the kept weights to this many bits in the same sweep; ``None`` (the
            default) leaves them in floating point.
        group_size: Quantization group size when ``bits`` is set (-1: per output channel).
        sym: Symmetric quantization grid when ``bits`` is set.
    """

    method: Literal["sparsegpt"] = "sparsegpt"
    damp: float = Field(default=0.01, ge=0.0, lt=1.0)
    bits: int | None = None
    group_size: int = 128
    sym: bool = False

    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})

    @model_validator(mode="after")
    def _check_quantization(self) -> SparseGPTConfig:
        if self.bits is not None:
            check_grid(self.bits, self.group_size)
        return self

    def produces(self) -> str | None:
        """Quantized layers when ``bits`` is set, else sparse float layers."""
        return None if self.bits is None else "quantized"


@dataclass(frozen=True)
class SparseGPTResult:
    """What :func:`sparsegpt_prune` returns."""

    weight: torch.Tensor  # (out, in) float32, pruned (and on the grid when quantized)
    qweight: QuantizedWeight | None
    obs_loss: float
    hessian_fallback: str
    damp: float


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float = 0.5,
    nm: tuple[int, int] | None = None,
    damp: float = 0.01,
    quant: tuple[int, int, bool] | None = None,
) -> SparseGPTResult:
    """Prune ``weight`` (out, in) against ``hessian`` (in, in); pure, never raises on singular H.

    Args:
        sparsity: Share of each block's weights to prune (ignored for ``nm``).
        nm: ``(N, M)`` for semi-structured sparsity.
        damp: Dampening, fraction of the mean Hessian diagonal.
        quant: ``(bits, group_size, sym)`` to quantize kept weights jointly.
    """
    work = weight.detach().float().clone()
    factor = inverse_cholesky(fix_dead_inputs(hessian.float(), work), damp)
    quantizer = QuantRule(work.clone(), *quant) if quant is not None else None
    units = [u for u in (nm[1] if nm else 0, quant[1] if quant else 0) if u > 0]  # both must fit in a block
    block_size = aligned_block_size(math.lcm(*units) if units else 0)
    loss = obs_sweep(work, factor.upper, MaskRule(sparsity, nm, quantizer), block_size)
    qweight = quantizer.result(work) if quantizer is not None else None
    return SparseGPTResult(work, qweight, loss, factor.fallback.value, factor.damp)


@register_method("sparsegpt", SparseGPTConfig, base=PruningHandler)
def sparsegpt(layer: LayerView, stats: LayerStats, cfg: SparseGPTConfig) -> dict:
    """Prune (and optionally quantize) the layer, writing the reconstructed weights."""
    sparsity = cfg.sparsity_for(layer.block_index)
    quant = (cfg.bits, cfg.group_size, cfg.sym) if cfg.bits is not None else None
    result = sparsegpt_prune(
        layer.weight, stats.hessian.to(layer.weight.device), sparsity, cfg.nm, cfg.damp, quant
    )
    report = {
        "pattern": cfg.pattern,
        "target_sparsity": cfg.target_sparsity if cfg.nm else sparsity,
        "hessian_fallback": result.hessian_fallback,
        "damp": result.damp,
        "obs_loss": result.obs_loss,
    }
    if result.qweight is not None:
        return {**report, **install_quantized(layer, result.qweight), "sym": cfg.sym}
    layer.weight.copy_(result.weight.to(layer.weight.dtype))
    return report
