"""netslim's round-to-nearest search for one scale (and minimum) per block of weights.

A block is ``k`` consecutive weights ``x`` of one row with importances ``w`` (all ones, or an
importance vector: each input channel's mean ``x^2`` over calibration data, so that the
error is weighted by how much each column matters). Both fits minimize the weighted squared
error ``sum w (x - x_hat)^2`` over a small grid of candidate scales, each refined by least
squares, and return the best candidate; all blocks are fitted at once (numpy, vectorized).

Symmetric grid (:func:`fit_symmetric`), ``x_hat = s * q`` with integer ``q`` in ``lo..hi``
(``lo = -hi - 1``, e.g. ``-8..7``): the weight of largest magnitude ``a`` anchors each
candidate: ``1 / s = (L + t) / a`` for ``L`` in ``{lo, hi}`` (map ``a`` to the longer or the
shorter end) and offsets ``t`` in ``[-1, 1]``. Each candidate rounds ``q = clip(round(x / s))``,
refits ``s = sum w x q / sum w q^2``, optionally rounds ``s`` to float16 (where ``s`` is
stored as is), re-rounds ``q`` with that ``s`` and scores it.

Asymmetric grid (:func:`fit_asymmetric`), ``x_hat = s * q + b`` with ``q`` in ``0..n``:
candidates ``1 / s = (n + t) / (max x - min x)`` with the offset ``b = min x``, then the
weighted least-squares line ``(s, b)`` through the rounded codes (a 2x2 solve), re-rounding
and scoring as above. With ``b_nonpositive`` (the K-quants store ``-b`` as an unsigned
minimum) ``b`` is clamped to ``<= 0``, and ``s`` refit with ``b = 0`` where it was positive.

The plain round-to-nearest choice (``s = a / lo`` for symmetric types, ``s = (max - min) / n``,
``b = min`` for asymmetric) is always among the candidates, so a fit is never worse than it.
"""

from __future__ import annotations

import numpy as np

OFFSETS = np.linspace(-1.0, 1.0, 21)


def _f16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16).astype(np.float64)


def _codes(x: np.ndarray, s: np.ndarray, b: np.ndarray | float, lo: int, hi: int) -> np.ndarray:
    inv = np.divide(1.0, s, out=np.zeros_like(s), where=s != 0)
    return np.clip(np.rint((x - b) * inv[:, None]), lo, hi)


def _error(x, w, s, b, q) -> np.ndarray:
    return (w * (x - s[:, None] * q - b) ** 2).sum(axis=1)


def fit_symmetric(x: np.ndarray, w: np.ndarray, lo: int, hi: int, f16: bool = False,
                  offsets: np.ndarray = OFFSETS) -> tuple[np.ndarray, np.ndarray]:
    """Best ``s`` (n,) and codes ``q`` (n, k) with ``x ~ s * q``, ``q`` in ``lo..hi``.

    Args:
        x: (n, k) weights, one block per row; w: (n, k) non-negative importances.
        f16: round ``s`` to float16 before scoring (the type stores ``s`` itself).
    """
    x = x.astype(np.float64)
    idx = np.abs(x).argmax(axis=1)
    a = x[np.arange(len(x)), idx]
    nonzero = a != 0
    safe = np.where(nonzero, a, 1.0)
    best_s = np.where(nonzero, safe / lo, 0.0)
    best_s = _f16(best_s) if f16 else best_s
    best_q = _codes(x, best_s, 0.0, lo, hi)
    best_e = _error(x, w, best_s, 0.0, best_q)
    for end in (lo, hi):
        for t in offsets:
            s = safe / (end + t)
            q = _codes(x, s, 0.0, lo, hi)
            den = (w * q * q).sum(axis=1)
            s = np.divide((w * x * q).sum(axis=1), den, out=s.copy(), where=den > 0)
            s = _f16(s) if f16 else s
            q = _codes(x, s, 0.0, lo, hi)
            e = _error(x, w, s, 0.0, q)
            better = (e < best_e) & nonzero
            best_s, best_e = np.where(better, s, best_s), np.where(better, e, best_e)
            best_q = np.where(better[:, None], q, best_q)
    return best_s, best_q


def fit_asymmetric(x: np.ndarray, w: np.ndarray, n: int, f16: bool = False, b_nonpositive: bool = False,
                   offsets: np.ndarray = OFFSETS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best ``s`` (n,), ``b`` (n,) and codes ``q`` (n, k) with ``x ~ s * q + b``, ``q`` in ``0..n``."""
    x = x.astype(np.float64)
    lo_x = x.min(axis=1)
    lo_x = np.minimum(lo_x, 0.0) if b_nonpositive else lo_x
    span = x.max(axis=1) - lo_x
    flat = span <= 0
    span = np.where(flat, 1.0, span)
    best_s = np.where(flat, 0.0, span / n)
    best_b = lo_x
    if f16:
        best_s, best_b = _f16(best_s), _f16(best_b)
    best_q = _codes(x, best_s, best_b[:, None], 0, n)
    best_e = _error(x, w, best_s, best_b[:, None], best_q)
    sw = w.sum(axis=1)
    swx = (w * x).sum(axis=1)
    for t in offsets:
        q = _codes(x, span / (n + t), lo_x[:, None], 0, n)
        sq, sqq, sxq = (w * q).sum(axis=1), (w * q * q).sum(axis=1), (w * x * q).sum(axis=1)
        det = sw * sqq - sq * sq
        ok = det > 1e-12 * np.maximum(sw * sqq, 1e-300)
        det = np.where(ok, det, 1.0)
        s = np.where(ok, (sw * sxq - sq * swx) / det, span / n)
        b = np.where(ok, (sqq * swx - sq * sxq) / det, lo_x)
        if b_nonpositive:
            positive = b > 0
            s = np.where(positive, np.divide(sxq, sqq, out=s.copy(), where=sqq > 0), s)
            b = np.where(positive, 0.0, b)
        s = np.maximum(s, 0.0)
        if f16:
            s, b = _f16(s), _f16(b)
        q = _codes(x, s, b[:, None], 0, n)
        e = _error(x, w, s, b[:, None], q)
        better = (e < best_e) & ~flat
        best_s, best_b, best_e = (np.where(better, v, o) for v, o in ((s, best_s), (b, best_b), (e, best_e)))
        best_q = np.where(better[:, None], q, best_q)
    return best_s, best_b, best_q
