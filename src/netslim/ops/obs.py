"""The blocked optimal-brain-surgeon sweep shared by SparseGPT and GPTQ.

Both papers process the columns of a weight ``W`` (out, in) left to right. Column ``i`` is
replaced by a compressed version ``q`` (pruned, quantized, or both) and the error
``e = (w_i - q) / U_ii`` is spread over the columns not yet processed through row ``i`` of
``U``, the upper Cholesky factor of ``H^-1`` (:func:`netslim.ops.hessian.inverse_cholesky`).
Updates are lazy: inside a block of columns (128 by default) they are applied at once, and
the block's accumulated error reaches the later columns in one matrix product.

What differs between the methods is only how a column is compressed, a *column rule*
called as ``rule(col, local, block, hinv_diag) -> q``:

- ``col``: the column's position in sweep order (after any act-order permutation);
- ``local``: its position inside the current block;
- ``block``: the block's current weights (out, block width), already updated by every
  earlier column; rules read it to choose masks or grids for the columns ahead;
- ``hinv_diag``: the diagonal of ``U`` restricted to the block, (block width,).

:class:`QuantRule` (GPTQ) rounds to a grid, :class:`MaskRule` (SparseGPT) picks masks by
the OBS saliency ``w^2 / U_ii^2`` and can hand the kept weights to a :class:`QuantRule`.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch

from netslim.ops.kgrid import SUPER_BLOCK, KGrid, kgrid_params
from netslim.ops.masks import layer_mask, nm_mask
from netslim.ops.quant import QuantizedWeight, codes_for, grid_params, group_index, group_params, max_code

BLOCK_SIZE = 128


class ColumnRule(Protocol):
    """How a method compresses one column (see the module docstring)."""

    def __call__(self, col: int, local: int, block: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor: ...


def aligned_block_size(unit: int, base: int = BLOCK_SIZE) -> int:
    """The smallest multiple of ``unit`` (a group size or N:M's M) that is at least ``base``.

    Rules that decide for ``unit`` columns at once read them from the current block, so
    every unit must lie inside one block.
    """
    return base if unit <= 0 else unit * math.ceil(base / unit)


def obs_sweep(weight: torch.Tensor, upper: torch.Tensor, rule: ColumnRule, block_size: int = BLOCK_SIZE) -> float:
    """Compress ``weight`` (out, in) float32 in place, column by column, with OBS updates.

    Args:
        weight: Modified in place; on return every column holds its rule's output.
        upper: Upper Cholesky factor of the (damped) inverse Hessian, (in, in).
        rule: The column rule.
        block_size: Columns per lazy-update block.

    Returns:
        The OBS estimate of the added loss, ``sum (w - q)^2 / (2 U_ii^2)``; with
        ``H = 2 X^T X / n`` it approximates ``||(W - Q) X^T||^2 / n`` (damping makes it an
        overestimate), a cheap per-layer reconstruction error.
    """
    columns = weight.shape[1]
    loss = torch.zeros((), dtype=torch.float64)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        # The block is held transposed, (width, out) in memory, so that each column a rule
        # reads and the sweep updates is contiguous; rules see the usual (out, width) view.
        block = weight[:, start:end].t().contiguous().t()
        hinv = upper[start:end, start:end]
        hinv_diag = torch.diagonal(hinv)
        errors = torch.empty(end - start, weight.shape[0], dtype=weight.dtype, device=weight.device)  # (width, out)
        for local in range(end - start):
            q = rule(start + local, local, block, hinv_diag)
            err = errors[local]
            torch.sub(block[:, local], q, out=err).div_(hinv_diag[local])
            block[:, local:].addr_(err, hinv[local, local:], alpha=-1)  # OBS update of the columns to come
            block[:, local] = q
        loss += errors.double().square().sum() / 2
        weight[:, start:end] = block
        weight[:, end:].addmm_(errors.t(), upper[start:end, end:], alpha=-1)
    return float(loss)


def _column_grid(scale: torch.Tensor, zero: torch.Tensor) -> tuple:
    """``(scale, zero, whole, fraction)`` of a group's grid (or of every group's, rows of
    (groups, out) tensors) as :func:`netslim.ops.quant.quantize_codes` applies it, contiguous;
    ``fraction`` is ``None`` for integer zero points (every grid but a fitted one)."""
    scale, zero = scale.contiguous(), zero.contiguous()
    whole = torch.round(zero)
    fraction = zero - whole
    return scale, zero, whole, (fraction if bool(fraction.any()) else None)


class QuantRule:
    """Round each column to its group's grid (GPTQ), keeping given zeros at zero.

    Args:
        weight: The layer's weight (out, in) in natural column order, before the sweep.
        bits, group_size, sym, fit: The grid (see :mod:`netslim.ops.quant`).
        importance: (in,) natural order: weights of each column's squared error in a fitted
            grid's search (GPTQ passes the Hessian diagonal), or ``None``.
        kgrid: A K-quant grid (:mod:`netslim.ops.kgrid`): groups are its sub-blocks, whose
            grids are chosen together when the sweep reaches their super-block.
        perm: Sweep order as indices into natural order (act-order), or ``None``.
        keep: Optional boolean (out, in) mask in sweep order; weights outside it are forced
            to zero and their error is compensated like any other (GPTQ after pruning).

    Group grids are fixed before the sweep from the original weights (*static groups*) when
    there is a permutation or one group per row; otherwise each group's grid is computed when
    the sweep reaches its first column, from the weights as updated so far (the GPTQ paper).
    Either way ``g_idx[i] = i // group_size`` in natural order.
    """

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int, sym: bool,
                 perm: torch.Tensor | None = None, keep: torch.Tensor | None = None, fit: bool = False,
                 importance: torch.Tensor | None = None, kgrid: KGrid | None = None):
        self.bits, self.group_size, self.sym, self.keep = bits, group_size, sym, keep
        self.fit, self.importance, self.kgrid = fit, importance, kgrid
        self.span = SUPER_BLOCK if kgrid is not None else group_size  # columns whose grids are chosen at once
        self.g_idx = group_index(weight.shape[1], group_size)
        self.static = perm is not None or group_size == -1
        order = perm if perm is not None else torch.arange(weight.shape[1])
        self.groups: list[int] = self.g_idx[order].tolist()  # group of each sweep position
        self.maxq = max_code(bits)
        self._grid: tuple | None = None  # the current group's grid, as _column_grid gives it
        if self.static:
            self.scales, self.zeros = group_params(weight.float(), bits, group_size, sym, fit, importance, kgrid)
            self._table = _column_grid(self.scales.t(), self.zeros.t())  # (groups, out) each
        else:
            groups = int(self.g_idx[-1]) + 1
            self.scales = torch.zeros(weight.shape[0], groups)
            self.zeros = torch.zeros(weight.shape[0], groups)

    def __call__(self, col: int, local: int, block: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
        return self.quantize(col, local, block, block[:, local])

    def quantize(self, col: int, local: int, block: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Grid values of ``values``, the column at sweep position ``col``."""
        group = self.groups[col]
        if not self.static and col % self.span == 0:
            span = slice(local, local + self.span)
            weights = None if self.importance is None else self.importance[col : col + self.span]
            if self.kgrid is not None:
                scale, zero = kgrid_params(block[:, span], self.kgrid, weights)
                self.scales[:, group : group + scale.shape[1]] = scale.to(block.device)
                self.zeros[:, group : group + scale.shape[1]] = zero.to(block.device)
            else:
                scale, zero = grid_params(block[:, span], self.bits, self.sym, self.fit, weights)
                self.scales[:, group], self.zeros[:, group] = scale, zero
            self._grid = None
        if self.static:  # every group's grid is known: one row of the table per group
            scale, zero, whole = self._table[0][group], self._table[1][group], self._table[2][group]
            fraction = None if self._table[3] is None else self._table[3][group]
        else:
            if self._grid is None or self._grid[0] != group:
                self._grid = (group, *_column_grid(self.scales[:, group], self.zeros[:, group]))
            _, scale, zero, whole, fraction = self._grid
        # fake_quantize, in place on one fresh column: clamp(round(w / s + frac) + whole) - zero, times s
        q = torch.div(values, scale)
        if fraction is not None:
            q.add_(fraction)
        q.round_().add_(whole).clamp_(0, self.maxq).sub_(zero).mul_(scale)
        return q if self.keep is None else q.mul_(self.keep[:, col])

    def result(self, weight: torch.Tensor) -> QuantizedWeight:
        """Codes of the swept ``weight`` (natural order, on the grid) and the grid."""
        codes = codes_for(weight, self.scales, self.zeros, self.g_idx, self.bits)
        return QuantizedWeight(codes, self.scales, self.zeros, self.g_idx, self.bits, self.group_size)


class MaskRule:
    """Choose which weights to prune by OBS saliency as the sweep reaches them (SparseGPT).

    Unstructured: at the start of each block, the ``sparsity`` share of the block's weights
    with the lowest ``w^2 / U_ii^2`` (over all rows together) is pruned. ``N:M``: at the first
    column of every group of ``M``, each row keeps its ``N`` most salient weights. Kept
    weights pass through ``quant`` when given (joint sparsity and quantization).
    """

    def __init__(self, sparsity: float, nm: tuple[int, int] | None = None, quant: QuantRule | None = None):
        self.sparsity, self.nm, self.quant = sparsity, nm, quant
        self.mask: torch.Tensor | None = None  # keep-mask of the current block

    def __call__(self, col: int, local: int, block: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
        if local == 0:
            self.mask = torch.ones_like(block, dtype=torch.bool)
            if self.nm is None:
                self.mask = layer_mask(block.square() / hinv_diag.square(), self.sparsity)
        if self.nm is not None and col % self.nm[1] == 0:
            span = slice(local, local + self.nm[1])
            self.mask[:, span] = nm_mask(block[:, span].square() / hinv_diag[span].square(), *self.nm)
        values = block[:, local] * self.mask[:, local]
        return values if self.quant is None else self.quant.quantize(col, local, block, values)
