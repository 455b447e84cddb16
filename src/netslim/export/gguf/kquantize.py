"""Float rows -> K-quant super-blocks (Q3_K, Q4_K, Q5_K, Q6_K): netslim's own two-level search.

Layouts: :mod:`~netslim.export.gguf.kquants`. For every super-block of 256 weights:

1. Each sub-block (32 weights for Q4_K/Q5_K, 16 for Q3_K/Q6_K) gets its own best float scale
   (and, for Q4_K/Q5_K, non-negative minimum) by :mod:`~netslim.ops.scale_search`, weighted
   by the importance vector if one is given (else every weight counts the same).
2. The sub-block scales are quantized to the type's integers: ``d = max sc / 63`` (float16)
   and ``sc = round(s / d)`` for Q4_K/Q5_K (``dmin`` and ``mn`` likewise for the minima);
   ``d = a / -128`` (Q6_K, int8) or ``a / -32`` (Q3_K, -32..31) for the sub-block scale ``a`` of
   largest magnitude, so that it takes the longer, negative end.
3. Local search on the integers: each sub-block tries ``sc +- 1`` (and ``mn +- 1``), its codes
   re-rounded with the stored ``(d * sc, dmin * mn)``, and keeps the combination of least
   error.
4. With codes and integers fixed, ``d`` (and ``dmin``) are refit by weighted least squares over
   the whole super-block and rounded to float16; a super-block keeps the refit only where it
   lowers its error. Steps 3 and 4 run twice.

Every error is measured on the values as stored (float16 ``d``, integer scales), i.e. exactly
what ggml decodes. ``d`` and ``dmin`` are clipped to float16's range: at least 2^-24 (for
tiny weights the integer scales are then small rather than the block zero) and at most
65504 (weights beyond about 65504 * 63 saturate).
"""

from __future__ import annotations

import itertools

import numpy as np

from netslim.export.gguf import kquants
from netslim.ops.kgrid import K_GRIDS
from netslim.ops.scale_search import fit_asymmetric, fit_symmetric

# type: (sub-block size, code range lo..hi, integer scale range, asymmetric), from the grids of ops.kgrid
SPECS = {g.name: (g.sub, *((0, (1 << g.bits) - 1) if g.asym else (-g.middle, g.middle - 1)),
                  (g.scale_low, g.scale_high), g.asym) for g in K_GRIDS.values()}
F16_MAX = 65504.0


F16_TINY = 2.0 ** -24  # the smallest positive float16


def _f16(v: np.ndarray) -> np.ndarray:
    return np.clip(v, -F16_MAX, F16_MAX).astype(np.float16).astype(np.float64)


def _f16_scale(v: np.ndarray) -> np.ndarray:
    """A super-block scale as float16, kept off zero: tiny weights then get small integer scales."""
    return _f16(np.where(v == 0, 0.0, np.sign(v) * np.maximum(np.abs(v), F16_TINY)))


def _div(a, b):
    return np.divide(a, b, out=np.zeros(np.broadcast_shapes(np.shape(a), np.shape(b))), where=b != 0)


class _Fit:
    """One type's super-blocks: weights x (n, subs, k), importances w, and the stored integers."""

    def __init__(self, qtype: str, x: np.ndarray, w: np.ndarray):
        self.k, self.lo, self.hi, (self.slo, self.shi), self.asym = SPECS[qtype]
        self.x, self.w = x, w

    def codes(self, d, sc, dmin, mn):
        """Codes (n, subs, k) and error per sub-block (n, subs) for integers sc, mn."""
        scale = d[:, None] * sc
        offset = dmin[:, None] * mn if self.asym else 0.0
        offset = offset[..., None] if self.asym else 0.0
        q = np.clip(np.rint(_div(self.x + offset, scale[..., None])), self.lo, self.hi)
        err = (self.w * (self.x - scale[..., None] * q + offset) ** 2).sum(axis=-1)
        return q, err

    def local_search(self, d, sc, dmin, mn):
        steps = list(itertools.product((-1, 0, 1), (-1, 0, 1) if self.asym else (0,)))
        best_q, best_e = self.codes(d, sc, dmin, mn)
        best_sc, best_mn = sc, mn
        for a, b in steps:
            if a == 0 and b == 0:
                continue
            sc2 = np.clip(sc + a, self.slo, self.shi)
            mn2 = np.clip(mn + b, 0, 63) if self.asym else mn
            q, e = self.codes(d, sc2, dmin, mn2)
            better = e < best_e
            best_e = np.where(better, e, best_e)
            best_q = np.where(better[..., None], q, best_q)
            best_sc = np.where(better, sc2, best_sc)
            best_mn = np.where(better, mn2, best_mn) if self.asym else mn
        return best_q, best_sc, best_mn, best_e.sum(axis=1)

    def refit(self, q, sc, mn):
        """Least-squares ``d`` (and ``dmin``) per super-block for fixed codes and integers."""
        n = len(q)
        w = self.w.reshape(n, -1)
        x = self.x.reshape(n, -1)
        a = (sc[..., None] * q).reshape(n, -1)
        if not self.asym:
            return _f16(_div((w * x * a).sum(1), (w * a * a).sum(1))), None
        b = -np.broadcast_to(mn[..., None], q.shape).reshape(n, -1)
        saa, sab, sbb = (w * a * a).sum(1), (w * a * b).sum(1), (w * b * b).sum(1)
        sxa, sxb = (w * x * a).sum(1), (w * x * b).sum(1)
        det = saa * sbb - sab * sab
        d = _div(sbb * sxa - sab * sxb, det)
        dmin = _div(saa * sxb - sab * sxa, det)
        return _f16(np.maximum(d, 0.0)), _f16(np.maximum(dmin, 0.0))


def quantize_superblocks(x: np.ndarray, w: np.ndarray, qtype: str) -> np.ndarray:
    """(n, 256) weights and importances -> (n, block bytes) super-blocks of ``qtype``."""
    k, lo, hi, (slo, shi), asym = SPECS[qtype]
    n = len(x)
    subs = kquants.QK_K // k
    fit = _Fit(qtype, x.reshape(n, subs, k).astype(np.float64), w.reshape(n, subs, k).astype(np.float64))
    flat_x, flat_w = fit.x.reshape(-1, k), fit.w.reshape(-1, k)
    if asym:
        s, b, _ = fit_asymmetric(flat_x, flat_w, hi, b_nonpositive=True)
        s, m = s.reshape(n, subs), -b.reshape(n, subs)
        d, dmin = _f16_scale(s.max(axis=1) / shi), _f16_scale(m.max(axis=1) / 63)
        sc = np.clip(np.rint(_div(s, d[:, None])), 0, shi)
        mn = np.clip(np.rint(_div(m, dmin[:, None])), 0, 63)
    else:
        s, _ = fit_symmetric(flat_x, flat_w, lo, hi)
        s = s.reshape(n, subs)
        a = s[np.arange(n), np.abs(s).argmax(axis=1)]
        d, dmin, mn = _f16_scale(a / slo), np.zeros(n), np.zeros_like(s)
        sc = np.clip(np.rint(_div(s, d[:, None])), slo, shi)
    q, sc, mn, err = fit.local_search(d, sc, dmin, mn)
    for _ in range(2):
        d2, dmin2 = fit.refit(q, sc, mn)
        dmin2 = dmin if dmin2 is None else dmin2
        q2, sc2, mn2, err2 = fit.local_search(d2, sc, dmin2, mn)
        better = err2 < err
        d, dmin, err = np.where(better, d2, d), np.where(better, dmin2, dmin), np.where(better, err2, err)
        q = np.where(better[:, None, None], q2, q)
        sc, mn = np.where(better[:, None], sc2, sc), np.where(better[:, None], mn2, mn)
        q, sc, mn, err = fit.local_search(d, sc, dmin, mn)
    q = q.reshape(n, kquants.QK_K).astype(np.int16)
    return kquants.pack(qtype, q, d, sc.astype(np.int16), dmin if asym else None, mn.astype(np.int16) if asym else None)


def quantize_k(weight: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """A float (rows, cols) weight, ``cols`` a multiple of 256, as (rows, cols / 256 * block bytes) uint8.

    ``importance``: (cols,) non-negative weights of the squared error per input channel.
    """
    rows, cols = weight.shape
    if cols % kquants.QK_K:
        raise ValueError(f"{qtype} needs rows of a multiple of {kquants.QK_K} values, got {cols}")
    x = weight.astype(np.float32).reshape(-1, kquants.QK_K)
    w = np.ones(cols) if importance is None else np.asarray(importance, dtype=np.float64).reshape(cols)
    w = np.broadcast_to(w, (rows, cols)).reshape(-1, kquants.QK_K)
    return np.ascontiguousarray(quantize_superblocks(x, w, qtype).reshape(rows, -1))
