"""K-quant grids: GGUF's Q3_K, Q4_K, Q5_K and Q6_K as grids GPTQ and RTN can quantize on.

A K-quant super-block holds 256 consecutive weights of one row, split into sub-blocks of 32
(Q4_K, Q5_K) or 16 (Q3_K, Q6_K). Each sub-block ``j`` has an integer scale ``sc_j`` (and, for
the asymmetric types, an integer minimum ``mn_j``) relative to the super-block's float16 ``d``
(and ``dmin``)::

    Q4_K, Q5_K   w = d * sc_j * q - dmin * mn_j     q in 0..15 / 0..31, sc_j and mn_j in 0..63
    Q6_K, Q3_K   w = d * sc_j * q                   q in -32..31 / -4..3, sc_j in -128..127 / -32..31

In netslim's grid convention (:mod:`netslim.ops.quant`, ``W = s * (code - z)`` per group) a
sub-block is a group: ``s = d * sc_j`` and ``z = dmin * mn_j / s`` (asymmetric, codes ``q``) or
``z = 2^(bits-1)`` (symmetric, codes ``q + 2^(bits-1)``). :func:`kgrid_params` chooses them for
the sub-blocks of one super-block:

1. each sub-block's float scale (and non-negative minimum) by the weighted least-squares search
   of :mod:`netslim.ops.scale_search`;
2. ``d`` (and ``dmin``) so that the largest sub-block scale (minimum) is exactly ``63 d``
   (``63 dmin``); symmetric types anchor the sub-block scale of largest magnitude at the
   negative end (``-128 d``, ``-32 d``), as llama.cpp does; every other scale rounds to its
   integer (kept off 0, so that no group has a zero scale).

That choice makes the grid recoverable from the scales alone: :func:`recover` finds ``d``,
``sc``, ``dmin`` and ``mn`` again (the GGUF export uses it to write such a layer's codes
unchanged), and refuses scales that do not have this structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from netslim.ops.scale_search import fit_asymmetric, fit_symmetric

SUPER_BLOCK = 256  # weights per K-quant super-block
F16_TINY = 2.0 ** -24
F16_MAX = 65504.0


@dataclass(frozen=True)
class KGrid:
    """One K-quant type's grid: sub-block size, bits, asymmetry and the range of its integer scales."""

    name: str  # the GGUF type name
    sub: int
    bits: int
    asym: bool
    scale_low: int
    scale_high: int

    @property
    def subs(self) -> int:
        """Sub-blocks per super-block."""
        return SUPER_BLOCK // self.sub

    @property
    def middle(self) -> int:
        """The zero point of the symmetric types' codes."""
        return 1 << (self.bits - 1)


K_GRIDS = {
    "q4_k": KGrid("Q4_K", 32, 4, True, 0, 63),
    "q5_k": KGrid("Q5_K", 32, 5, True, 0, 63),
    "q6_k": KGrid("Q6_K", 16, 6, False, -128, 127),
    "q3_k": KGrid("Q3_K", 16, 3, False, -32, 31),
}
"""GGUF K-quant type (lower case) -> its :class:`KGrid`."""


def _f16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float64)


def _off_zero(v: np.ndarray) -> np.ndarray:
    return np.where(np.abs(v) < F16_TINY, np.where(v < 0, -F16_TINY, F16_TINY), v)


def kgrid_params(weight: torch.Tensor, grid: KGrid, importance: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points (out, sub-blocks) of one super-block ``weight`` (out, 256).

    ``importance`` (256,): non-negative weights of each column's squared error in the search.
    """
    x = weight.detach().double().cpu().numpy()
    rows = x.shape[0]
    w = np.ones_like(x) if importance is None else np.broadcast_to(
        importance.detach().double().cpu().clamp_min(0).numpy(), x.shape)
    xs, ws = x.reshape(-1, grid.sub), np.ascontiguousarray(w).reshape(-1, grid.sub)
    if grid.asym:
        s, b, _ = fit_asymmetric(xs, ws, (1 << grid.bits) - 1, b_nonpositive=True)
        s, m = s.reshape(rows, grid.subs), np.maximum(-b.reshape(rows, grid.subs), 0.0)
        d = _f16(_off_zero(s.max(axis=1) / grid.scale_high))
        sc = np.clip(np.rint(s / d[:, None]), 1, grid.scale_high)
        top = m.max(axis=1)
        dmin = np.where(top > 0, _f16(_off_zero(top / 63)), 0.0)
        mn = np.clip(np.rint(np.divide(m, dmin[:, None], out=np.zeros_like(m), where=dmin[:, None] > 0)), 0, 63)
        scale = d[:, None] * sc
        zero = dmin[:, None] * mn / scale
    else:
        s, _ = fit_symmetric(xs, ws, -grid.middle, grid.middle - 1)
        s = s.reshape(rows, grid.subs)
        anchor = s[np.arange(rows), np.abs(s).argmax(axis=1)]
        d = _f16(_off_zero(anchor / grid.scale_low))
        sc = np.clip(np.rint(s / d[:, None]), grid.scale_low, grid.scale_high)
        sc = np.where(sc == 0, 1, sc)
        scale = d[:, None] * sc
        zero = np.full_like(scale, float(grid.middle))
    return torch.from_numpy(scale).float(), torch.from_numpy(zero).float()


@dataclass(frozen=True)
class KParams:
    """A layer's K-quant integers: per super-block ``d`` and ``dmin`` (n,), per sub-block ``sc``, ``mn`` (n, subs)."""

    d: np.ndarray
    sc: np.ndarray
    dmin: np.ndarray | None
    mn: np.ndarray | None


def recover(scales: torch.Tensor, zeros: torch.Tensor, grid: KGrid) -> KParams | None:
    """The K-quant integers behind a layer's per-sub-block ``scales`` and ``zeros`` (rows, groups).

    The groups must be the sub-blocks in column order (``groups`` a multiple of the sub-blocks
    per super-block). Returns ``None`` unless every super-block has the structure
    :func:`kgrid_params` gives (float16 ``d``, integer scales in range, their decoded values
    those of the layer to float32 rounding).
    """
    s = scales.double().numpy()
    z = zeros.double().numpy()
    if s.shape[1] % grid.subs:
        return None
    s = s.reshape(-1, grid.subs)
    z = z.reshape(-1, grid.subs)
    if grid.asym:
        d = s.max(axis=1) / grid.scale_high
        m = s * z
        top = m.max(axis=1)
        dmin = np.where(top > 0, _f16(top / 63), 0.0)
        mn = np.rint(np.divide(m, dmin[:, None], out=np.zeros_like(m), where=dmin[:, None] > 0))
        ok = (np.all((mn >= 0) & (mn <= 63), axis=1)
              & np.all(np.abs(dmin[:, None] * mn - m) <= 1e-6 * np.maximum(np.abs(m), 1e-30), axis=1))
    else:
        d = s[np.arange(len(s)), np.abs(s).argmax(axis=1)] / grid.scale_low
        ok = np.all(z == grid.middle, axis=1)
        dmin = mn = None
    sc = np.rint(np.divide(s, d[:, None], out=np.zeros_like(s), where=d[:, None] != 0))
    ok &= (_f16(d) == d) & (d != 0)
    ok &= np.all((sc >= grid.scale_low) & (sc <= grid.scale_high) & (d[:, None] * sc == s), axis=1)
    if not bool(ok.all()):
        return None
    return KParams(d, sc.astype(np.int16), dmin, None if mn is None else mn.astype(np.int16))
