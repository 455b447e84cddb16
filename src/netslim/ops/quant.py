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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 8


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


def grid_params(weight: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point per row of ``weight`` (out, k) from its min/max; each of shape (out,)."""
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


def quantize_codes(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(w / scale) + zero, 0, maxq)`` as float; ``scale``/``zero`` broadcast."""
    return torch.clamp(torch.round(weight / scale) + zero, 0, max_code(bits))


def fake_quantize(weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """The dequantized value of the nearest grid point, same shape as ``weight``."""
    return scale * (quantize_codes(weight, scale, zero, bits) - zero)


def group_params(
    weight: torch.Tensor, bits: int, group_size: int, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zeros (out, n_groups) of ``weight`` (out, in) in natural column order."""
    width = weight.shape[1] if group_size == -1 else group_size
    pairs = [grid_params(weight[:, start : start + width], bits, sym) for start in range(0, weight.shape[1], width)]
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


def quantize_rtn(weight: torch.Tensor, bits: int, group_size: int = 128, sym: bool = False) -> QuantizedWeight:
    """Round every weight to the nearest point of its group's min/max grid (no data needed)."""
    check_grid(bits, group_size)
    scales, zeros = group_params(weight, bits, group_size, sym)
    g_idx = group_index(weight.shape[1], group_size)
    return QuantizedWeight(codes_for(weight, scales, zeros, g_idx, bits), scales, zeros, g_idx, bits, group_size)
