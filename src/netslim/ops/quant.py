"""Uniform min/max quantization grids: integer codes, scales and zero points.

The convention shared with the packed storage (:mod:`netslim.nn.quantized`) is

    W[o, i] = scales[o, g_idx[i]] * (codes[o, i] - zeros[o, g_idx[i]])

with ``codes`` uint8 in ``[0, 2^bits - 1]``, ``scales`` and ``zeros`` float32 of shape
(out, n_groups) (zeros hold integers), and ``g_idx`` int32 of shape (in,). Without
act-order, ``g_idx[i] = i // group_size``; ``group_size = -1`` means one group per output
channel (per-channel quantization). When ``in_features`` is not a multiple of the group size
the last group is shorter.

Grids (as in the GPTQ reference code):

- asymmetric: the range ``[min(w_min, 0), max(w_max, 0)]`` is split into ``2^bits - 1``
  steps and the zero point is rounded to an integer, so 0 is always exactly representable
  (pruned weights stay exactly zero);
- symmetric: the range ``[-a, a]`` with ``a = max|w|``, scale ``2a / (2^bits - 1)`` and the
  zero point fixed at ``2^(bits-1)``.

A group whose weights are all zero gets the range ``[-1, 1]`` so that its scale is not 0.

K-quant grids (GGUF's Q3_K ... Q6_K, super-blocks of 256 inputs): see :mod:`netslim.ops.kgrid`;
:func:`gguf_grid` says which grid a layer of a given width gets for a GGUF type name.

Fitted grids (``fit=True``, the grids of GGUF's 32-weight block types, see
:data:`GGUF_GRIDS`): each group's scale (and, asymmetric, its minimum) is chosen by the
weighted least-squares search of :mod:`netslim.ops.scale_search` instead of min/max, with the
scale rounded to float16 inside the search, so that a GGUF file stores it exactly. Symmetric:
``W = s * (code - 2^(bits-1))``, the scale may be negative (the weight of largest magnitude
takes the longer, negative end, as llama.cpp's Q4_0 does). Asymmetric: ``W = s * code + m``
with float16 ``s`` and ``m``, written here as the zero point ``-m / s``, which is then not an
integer; a weight that was exactly zero decodes to at most ``2^-11 * |m|`` off zero.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from netslim.ops.kgrid import F16_TINY, K_GRIDS, SUPER_BLOCK, KGrid, kgrid_params
from netslim.ops.scale_search import fit_asymmetric, fit_symmetric

MIN_BITS, MAX_BITS = 2, 8
GGUF_BLOCK = 32  # weights per GGUF block: the group size of a fitted GGUF grid
GGUF_GRIDS = {"q4_0": (4, True), "q4_1": (4, False), "q5_0": (5, True), "q5_1": (5, False), "q8_0": (8, True)}
"""GGUF block type -> (bits, symmetric) of its grid; every one has groups of :data:`GGUF_BLOCK`."""
K_FALLBACK = {"q4_k": "q4_1", "q5_k": "q5_1", "q6_k": "q8_0", "q3_k": "q4_0"}
"""The 32-weight grid a K-quant grid falls back to where the inputs are not a multiple of 256."""


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight matrix as integer codes plus its grid (see the module docstring)."""

    codes: torch.Tensor  # (out, in) uint8
    scales: torch.Tensor  # (out, n_groups) float32
    zeros: torch.Tensor  # (out, n_groups) float32, integer-valued
    g_idx: torch.Tensor  # (in,) int32
    bits: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (out, in) the codes stand for."""
        return dequantize(self.codes, self.scales, self.zeros, self.g_idx)


@dataclass(frozen=True)
class GGUFGrid:
    """The grid a layer gets for a GGUF type: bits, group size, symmetry, K-quant structure.

    Attributes:
        name: The GGUF type whose grid it is (lower case), the requested one or its fallback;
            ``None`` for a plain min/max grid.
        kgrid: The K-quant structure, for ``q3_k`` ... ``q6_k``; ``None`` for 32-weight types.
        fallback: Why the requested type could not be used (``None`` when it is).
    """

    name: str | None
    bits: int
    group_size: int
    sym: bool
    kgrid: KGrid | None = None
    fallback: str | None = None


def gguf_grid(name: str, in_features: int) -> GGUFGrid:
    """The grid of GGUF type ``name`` for a layer of ``in_features`` inputs.

    A K-quant type needs a multiple of 256 inputs; otherwise its :data:`K_FALLBACK` grid,
    with the reason.
    """
    if name in K_GRIDS:
        k = K_GRIDS[name]
        if in_features % SUPER_BLOCK == 0:
            return GGUFGrid(name, k.bits, k.sub, not k.asym, k)
        fallback = K_FALLBACK[name]
        reason = f"{in_features} inputs are not a multiple of {SUPER_BLOCK} ({name} super-blocks): {fallback}"
        return replace(gguf_grid(fallback, in_features), fallback=reason)
    bits, sym = GGUF_GRIDS[name]
    return GGUFGrid(name, bits, GGUF_BLOCK, sym)


def check_grid(bits: int, group_size: int) -> None:
    """Raise ``ValueError`` (a config validation error) for unsupported bits or group size."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits}: use {MIN_BITS} to {MAX_BITS}")
    if group_size != -1 and group_size < 1:
        raise ValueError(f"group_size={group_size}: use -1 (per output channel) or a positive size, e.g. 128")


def max_code(bits: int) -> int:
    """The largest code, ``2^bits - 1``."""
    return (1 << bits) - 1


def group_width(in_features: int, group_size: int) -> int:
    """Columns per group: ``group_size``, or all of them for ``-1`` (or ``>= in_features``)."""
    return group_size if 0 < group_size < in_features else in_features


def group_index(in_features: int, group_size: int) -> torch.Tensor:
    """``g_idx`` (in,) int32 in natural column order: ``i // group_size`` (all 0 for -1)."""
    return torch.arange(in_features, dtype=torch.int32) // group_width(in_features, group_size)


def grid_params(weight: torch.Tensor, bits: int, sym: bool, fit: bool = False,
                importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of ``weight`` (out, k); each of shape (out,).

    From the rows' min/max, or with ``fit`` by the search (see the module docstring), its
    squared error weighted per column by ``importance`` (k,) when given.
    """
    if fit:
        return fitted_params(weight, bits, sym, importance)
    weight = weight.float()
    maxq = max_code(bits)
    low = weight.min(dim=1).values.clamp_max(0.0)
    high = weight.max(dim=1).values.clamp_min(0.0)
    if sym:
        high = torch.maximum(low.abs(), high)
        low = -high
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = (high - low) / maxq
    if sym:
        zero = torch.full_like(scale, float((maxq + 1) // 2))
    else:
        zero = torch.round(-low / scale)
    return scale, zero


def fitted_params(weight: torch.Tensor, bits: int, sym: bool,
                  importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fitted grid of each row of ``weight`` (out, k): float16-exact scale and zero point (out,)."""
    x = weight.detach().double().cpu().numpy()
    w = np.ones_like(x) if importance is None else np.broadcast_to(
        importance.detach().double().cpu().clamp_min(0).numpy(), x.shape)
    if sym:
        middle = 1 << (bits - 1)
        s, _ = fit_symmetric(x, w, -middle, middle - 1, f16=True)
        s = np.where(s == 0, 1.0, s)  # an all-zero row: any scale, code = middle
        zero = np.full_like(s, float(middle))
    else:
        s, m, _ = fit_asymmetric(x, w, max_code(bits), f16=True)
        flat = s == 0  # every weight equal to m: one step of |m| (or of the smallest float16) from it
        s = np.where(flat, np.maximum(np.abs(m), F16_TINY).astype(np.float16).astype(np.float64), s)
        zero = -m / s
    device = weight.device
    return torch.from_numpy(s).float().to(device), torch.from_numpy(zero).float().to(device)


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(w / scale + zero), 0, maxq)`` as float; ``scale``/``zero`` broadcast.

    An integer zero point is added after rounding (the GPTQ reference's order, bit for bit);
    a fitted grid's fractional part of it before.
    """
    whole = torch.round(zero)
    return torch.clamp(torch.round(weight / scale + (zero - whole)) + whole, 0, max_code(bits))


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The dequantized value of the nearest grid point, same shape as ``weight``."""
    return scale * (quantize_codes(weight, scale, zero, bits) - zero)


def group_params(
    weight: torch.Tensor, bits: int, group_size: int, sym: bool, fit: bool = False,
    importance: torch.Tensor | None = None, kgrid: KGrid | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zeros (out, n_groups) of ``weight`` (out, in) in natural column order.

    ``fit`` and ``importance`` (in,): as in :func:`grid_params`; ``kgrid``: a K-quant grid
    (groups are its sub-blocks, chosen a super-block at a time).
    """
    if kgrid is not None:
        pairs = [kgrid_params(weight[:, start : start + SUPER_BLOCK], kgrid,
                              None if importance is None else importance[start : start + SUPER_BLOCK])
                 for start in range(0, weight.shape[1], SUPER_BLOCK)]
        return torch.cat([s for s, _ in pairs], dim=1), torch.cat([z for _, z in pairs], dim=1)
    width = weight.shape[1] if group_size == -1 else group_size
    pairs = [grid_params(weight[:, start : start + width], bits, sym, fit,
                         None if importance is None else importance[start : start + width])
             for start in range(0, weight.shape[1], width)]
    return torch.stack([s for s, _ in pairs], dim=1), torch.stack([z for _, z in pairs], dim=1)


def codes_for(
    weight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, bits: int
) -> torch.Tensor:
    """uint8 codes (out, in) of ``weight`` under a given grid (exact for weights on the grid)."""
    index = g_idx.long()
    return quantize_codes(weight.float(), scales[:, index], zeros[:, index], bits).to(torch.uint8)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor) -> torch.Tensor:
    """``scales[o, g_idx[i]] * (codes[o, i] - zeros[o, g_idx[i]])`` (out, in), in the scales' dtype.

    The one dequantization formula: :class:`QuantizedWeight` and
    :class:`netslim.nn.quantized.QuantizedLinear` both call it.
    """
    index = g_idx.long()
    return scales[:, index] * (codes.to(scales.dtype) - zeros[:, index])


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False,
                 fit: bool = False, kgrid: KGrid | None = None) -> QuantizedWeight:
    """Round every weight to the nearest point of its group's grid: min/max, fitted or K-quant (no data needed)."""
    check_grid(bits, group_size)
    scales, zeros = group_params(weight, bits, group_size, sym, fit, kgrid=kgrid)
    g_idx = group_index(weight.shape[1], group_size)
    return QuantizedWeight(codes_for(weight, scales, zeros, g_idx, bits), scales, zeros, g_idx, bits, group_size)
