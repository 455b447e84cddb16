"""Quantizing float weights to a GGUF block type, and what a row length forces instead.

- 32-weight blocks (layouts in :mod:`~netslim.export.gguf.blocks`): Q4_0, Q5_0, Q8_0 are
  symmetric, ``w = d * q`` with ``q`` in ``-8..7``, ``-16..15``, ``-128..127``; Q4_1 and Q5_1
  are ``w = d * q + m`` with ``q`` in ``0..15``, ``0..31``. Each block's float16 ``d`` (and
  ``m``) is chosen by :mod:`~netslim.ops.scale_search` with float16 rounding in the loop, so
  the error is scored on what is stored.
- K-quants (Q3_K, Q4_K, Q5_K, Q6_K): :mod:`~netslim.export.gguf.kquantize`.

Both minimize the squared error, weighted per input channel by an importance vector
(calibration mean ``x^2``) when one is given.

Row lengths: ggml blocks never straddle rows, so a row of ``cols`` values needs ``cols`` a
multiple of 256 for a K-quant and of 32 for the others. :func:`storage_type` picks the stored
type and says why when it differs from the requested one: a K-quant falls back to the 32-block
type of about its precision (Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, as
llama.cpp's quantizer does where it can), and a 32-block type to F16.
"""

from __future__ import annotations

import numpy as np
import torch

from netslim.export.gguf.blocks import QK, pack_codes
from netslim.export.gguf.kquantize import quantize_k
from netslim.export.gguf.kquants import QK_K
from netslim.ops.scale_search import fit_asymmetric, fit_symmetric

BLOCK_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_TYPES = ("Q3_K", "Q4_K", "Q5_K", "Q6_K")
K_FALLBACK = {"Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_SYMMETRIC = {"Q4_0": (-8, 7), "Q5_0": (-16, 15), "Q8_0": (-128, 127)}
_ASYMMETRIC = {"Q4_1": 15, "Q5_1": 31}


def storage_type(qtype: str, cols: int) -> tuple[str, str | None]:
    """``(stored type, None)``, or ``(fallback type, reason)`` when rows of ``cols`` cannot be ``qtype``."""
    if qtype in K_TYPES and cols % QK_K:
        fallback, _ = storage_type(K_FALLBACK[qtype], cols)
        return fallback, f"rows of {cols} values are not a multiple of {QK_K} ({qtype} super-blocks): {fallback}"
    if qtype in BLOCK_TYPES and cols % QK:
        return "F16", f"rows of {cols} values are not a multiple of {QK} ({qtype} blocks): F16"
    return qtype, None


def _importance(importance, rows: int, cols: int, k: int) -> np.ndarray:
    w = np.ones(cols) if importance is None else np.asarray(importance, dtype=np.float64).reshape(cols)
    return np.broadcast_to(w, (rows, cols)).reshape(-1, k)


def quantize_blocks(weight: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """A float (rows, cols) weight, ``cols`` a multiple of 32, as ``qtype`` (Q4_0 ... Q8_0) blocks."""
    rows, cols = weight.shape
    x = weight.astype(np.float64).reshape(-1, QK)
    w = _importance(importance, rows, cols, QK)
    if qtype in _SYMMETRIC:
        lo, hi = _SYMMETRIC[qtype]
        d, q = fit_symmetric(x, w, lo, hi, f16=True)
        return pack_codes(qtype, (q - lo).astype(np.uint8).reshape(rows, cols), d.reshape(rows, -1))
    d, m, q = fit_asymmetric(x, w, _ASYMMETRIC[qtype], f16=True)
    return pack_codes(qtype, q.astype(np.uint8).reshape(rows, cols), d.reshape(rows, -1), m.reshape(rows, -1))


def quantize_float(weight: np.ndarray, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """A float (rows, cols) weight as ``qtype`` bytes (rows, bytes per row); ``cols`` must suit ``qtype``."""
    if qtype in K_TYPES:
        return quantize_k(weight, qtype, importance)
    return quantize_blocks(weight, qtype, importance)


def float_array(tensor: torch.Tensor, qtype: str, importance: np.ndarray | None = None) -> np.ndarray:
    """A float tensor as ``F32``, ``F16``, ``BF16`` (uint8 bytes) or block-type (uint8 blocks) data.

    ``importance``: per-input-channel weights of the squared error, for block types only.
    """
    t = tensor.detach().to("cpu")
    if qtype == "F32":
        return t.float().numpy().copy()
    if qtype == "F16":
        return t.float().numpy().astype(np.float16)
    if qtype == "BF16":
        raw = t.to(torch.bfloat16).contiguous().view(torch.int16).numpy()
        return raw.view(np.uint8).reshape(*raw.shape[:-1], raw.shape[-1] * 2).copy()
    return quantize_float(t.float().numpy(), qtype, importance)
