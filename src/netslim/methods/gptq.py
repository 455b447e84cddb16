"""GPTQ: quantize a layer column by column, compensating each rounding error with OBS updates.

Frantar, Ashkboos, Hoefler & Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", 2022 (https://arxiv.org/abs/2210.17323). Each column is
rounded to its grid and the error is spread over the columns not yet quantized through the
inverse-Hessian Cholesky factor (:mod:`netslim.ops.obs`, shared with SparseGPT), in blocks of
128 columns with lazy updates.

Options beyond the grid (:class:`~netslim.methods.rtn.QuantizationConfig`):

- ``act_order``: process columns by decreasing Hessian diagonal (most active inputs first).
  Groups are then *static*: every group's grid is computed from the original weights before
  the sweep, so ``g_idx`` stays ``i // group_size`` and the storage needs no permutation.
- ``damp``: dampening as a fraction of the mean Hessian diagonal (default 1%); a
  Hessian that is still not positive definite takes the fallback chain of
  :mod:`netslim.ops.hessian`, recorded per layer as ``hessian_fallback``.
- ``gguf``: the grid of a GGUF block type (:class:`~netslim.methods.rtn.QuantizationConfig`);
  each group's scale is fitted when the sweep reaches it, its squared error weighted by the
  Hessian diagonal.
- ``true_sequential`` (default on): q/k/v, then o, then gate/up, then down are calibrated
  one after another, each on the outputs of the already quantized layers before it.

Weights that are exactly zero on entry (a pruning stage earlier in the recipe) are kept at
zero: they are masked inside the sweep, so their share of the error is compensated by the
kept weights of the same rows. A recipe ``[sparsegpt 50%, gptq 4-bit]`` therefore ends
exactly as sparse as the pruning left it.

Recipe:
    - method: gptq
      bits: 4
      group_size: 128
      act_order: true
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field

from netslim.engine.stats import LayerStats, Stat
from netslim.methods.base import LayerView
from netslim.methods.registry import register_method
from netslim.methods.rtn import QuantizationConfig, grid_fields, install_quantized
from netslim.ops.kgrid import KGrid
from netslim.ops.hessian import fix_dead_inputs, inverse_cholesky
from netslim.ops.obs import QuantRule, aligned_block_size, obs_sweep
from netslim.ops.quant import QuantizedWeight


class GPTQConfig(QuantizationConfig):
    """GPTQ settings (see the module docstring and :class:`QuantizationConfig`)."""

    method: Literal["gptq"] = "gptq"
    act_order: bool = False
    damp: float = Field(default=0.01, ge=0.0, lt=1.0)
    true_sequential: bool = True

    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})


@dataclass(frozen=True)
class GPTQResult:
    """What :func:`gptq_quantize` returns."""

    qweight: QuantizedWeight
    obs_loss: float  # OBS estimate of the added layer-output loss
    hessian_fallback: str
    damp: float


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int = 4,
    group_size: int = 128,
    sym: bool = False,
    act_order: bool = False,
    damp: float = 0.01,
    fit: bool = False,
    kgrid: KGrid | None = None,
) -> GPTQResult:
    """Quantize ``weight`` (out, in) against ``hessian`` (in, in); pure, never raises on singular H.

    ``fit``: fitted grids (:mod:`netslim.ops.quant`) weighted by the Hessian diagonal;
    ``kgrid``: a K-quant grid (:mod:`netslim.ops.kgrid`, ``group_size`` its sub-block).
    """
    work = weight.detach().float().clone()
    hessian = fix_dead_inputs(hessian.float(), work)  # zeroes dead columns of ``work``
    keep = work != 0 if bool((work == 0).any()) else None
    perm = torch.argsort(torch.diagonal(hessian), descending=True, stable=True) if act_order else None
    rule_weight = work.clone()  # natural order, for static grids
    importance = torch.diagonal(hessian).clone() if fit or kgrid is not None else None  # natural order
    if perm is not None:
        work, hessian = work[:, perm], hessian[perm][:, perm]
        keep = None if keep is None else keep[:, perm]
    factor = inverse_cholesky(hessian, damp)
    rule = QuantRule(rule_weight, bits, group_size, sym, perm=perm, keep=keep, fit=fit, importance=importance,
                     kgrid=kgrid)
    loss = obs_sweep(work, factor.upper, rule, aligned_block_size(rule.span))
    if perm is not None:
        work = work[:, torch.argsort(perm)]
    return GPTQResult(rule.result(work), loss, factor.fallback.value, factor.damp)


@register_method("gptq", GPTQConfig)
def gptq(layer: LayerView, stats: LayerStats, cfg: GPTQConfig) -> dict:
    """Quantize the layer with GPTQ and swap in the quantized module."""
    grid = cfg.layer_grid(layer.weight.shape[1], layer.name)
    result = gptq_quantize(
        layer.weight, stats.hessian.to(layer.weight.device), grid.bits, grid.group_size, grid.sym,
        cfg.act_order, cfg.damp, fit=grid.name is not None, kgrid=grid.kgrid,
    )
    return {
        **install_quantized(layer, result.qweight),
        **grid_fields(grid),
        "act_order": cfg.act_order,
        "hessian_fallback": result.hessian_fallback,
        "damp": result.damp,
        "obs_loss": result.obs_loss,
    }
