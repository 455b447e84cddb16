"""GGUF block types packed with numpy, byte for byte as ggml's block structs.

Every type here stores 32 consecutive weights of one row as one block (``QK = 32``)::

    Q4_0  { f16 d;          u8 qs[16]; }   w = d * (q - 8),   q in 0..15
    Q4_1  { f16 d; f16 m;   u8 qs[16]; }   w = d * q + m,     q in 0..15
    Q5_0  { f16 d;          u32 qh; u8 qs[16]; }   w = d * (q - 16), q in 0..31
    Q5_1  { f16 d; f16 m;   u32 qh; u8 qs[16]; }   w = d * q + m,    q in 0..31
    Q8_0  { f16 d;          i8 qs[32]; }   w = d * q,         q in -128..127

``qs[j]`` holds weight ``j`` in its low nibble and weight ``j + 16`` in its high nibble;
the 5-bit types keep bit 4 of weight ``j`` in bit ``j`` of the little-endian ``qh``.

A :class:`~netslim.nn.quantized.QuantizedLinear` computes ``W = s * (code - z)`` per group;
where its grid is one of these (see :func:`block_type_for`), the codes are stored unchanged:

- 4-bit symmetric (``z == 8``) -> Q4_0 with ``d = s``, ``q = code``;
- 4-bit asymmetric -> Q4_1 with ``d = s``, ``m = -s * z``, ``q = code``;
- 5-bit symmetric (``z == 16``) -> Q5_0; 5-bit asymmetric -> Q5_1, likewise;
- 8-bit symmetric (``z == 128``) -> Q8_0 with ``q = code - 128``.

A group of 64 or 128 columns spans 2 or 4 blocks, which repeat its ``d`` (and ``m``).

Exactness: the codes are exact; ``d`` and ``m`` are stored as float16, so a decoded weight
equals ``f16(s) * (code - z)`` (Q4_0, Q5_0, Q8_0) or ``f16(s) * code + f16(-s * z)`` (Q4_1,
Q5_1) instead of ``s * (code - z)``: a relative error of at most 2^-11 in each scale, and for
the asymmetric types a further absolute error of at most ``2^-11 * |s * z|``. Scales outside
float16's range (above 65504, or below 2^-24) cannot be stored; such layers are not exact.

Float tensors: F32 and F16 are plain numpy arrays; BF16 is rounded to nearest even from
float32; a float weight in a block type (these or the K-quants) is quantized by
:mod:`~netslim.export.gguf.floatquant`.
"""

from __future__ import annotations

import numpy as np
import torch

QK = 32  # weights per block, for every type in this module
F16_MAX = 65504.0
F16_TINY = 2.0 ** -24  # the smallest positive float16 (subnormal)


def _f16(values: np.ndarray) -> np.ndarray:
    """(n_blocks,) float -> (n_blocks, 2) bytes of little-endian float16."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) values whose low 4 bits are packed: byte j = q[j] | q[j + 16] << 4."""
    low = q[:, : QK // 2] & 0x0F
    high = q[:, QK // 2 :] & 0x0F
    return (low | (high << 4)).astype(np.uint8)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) 5-bit values -> (n_blocks, 4) bytes of the u32 whose bit j is bit 4 of q[j]."""
    bits = ((q.astype(np.uint32) >> 4) & 1) << np.arange(QK, dtype=np.uint32)
    return bits.sum(axis=1, dtype=np.uint32).astype("<u4").view(np.uint8).reshape(-1, 4)


def _rows(blocks: np.ndarray, rows: int) -> np.ndarray:
    """Blocks (rows * cols / 32, bytes) as the (rows, bytes per row) uint8 array GGUFWriter takes."""
    return np.ascontiguousarray(blocks.reshape(rows, -1))


def pack_codes(qtype: str, codes: np.ndarray, d: np.ndarray, m: np.ndarray | None = None) -> np.ndarray:
    """Blocks of ``qtype`` (``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q8_0``) from integer codes.

    Args:
        codes: (rows, cols) uint8 codes, ``cols`` a multiple of 32, as the type's ``q``
            (for Q8_0 the unsigned code; ``code - 128`` is stored).
        d: (rows, cols / 32) float scale of each block.
        m: (rows, cols / 32) float minimum of each block (Q4_1 and Q5_1 only).

    Returns:
        (rows, cols / 32 * block bytes) uint8.
    """
    rows = codes.shape[0]
    q = codes.reshape(-1, QK)
    parts = [_f16(d.reshape(-1))]
    if qtype in ("Q4_1", "Q5_1"):
        parts.append(_f16(m.reshape(-1)))
    if qtype in ("Q5_0", "Q5_1"):
        parts.append(_high_bits(q))
    if qtype == "Q8_0":
        parts.append((q.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        parts.append(_nibbles(q))
    return _rows(np.concatenate(parts, axis=1), rows)


def block_type_for(bits: int, zeros: torch.Tensor) -> tuple[str | None, str | None]:
    """The GGUF block type whose grid is ``bits``-bit codes with zero points ``zeros``.

    Returns:
        ``(type, None)``, or ``(None, reason)`` when no GGUF type has this grid.
    """
    middle = float(1 << (bits - 1))
    symmetric = bool(torch.all(zeros == middle))
    if bits == 4:
        return ("Q4_0" if symmetric else "Q4_1"), None
    if bits == 5:
        return ("Q5_0" if symmetric else "Q5_1"), None
    if bits == 8:
        if symmetric:
            return "Q8_0", None
        return None, "8-bit asymmetric grid: GGUF's 8-bit type Q8_0 is symmetric (zero point 128)"
    return None, f"{bits}-bit codes: GGUF has no {bits}-bit block type with a per-group scale and zero point"


def scales_fit_f16(scales: torch.Tensor, zeros: torch.Tensor) -> bool:
    """Whether every ``d = s`` and ``m = -s * z`` is representable (finite, not flushed) in float16."""
    s = scales.abs()
    m = (scales * zeros).abs()
    return bool((s <= F16_MAX).all() and ((s == 0) | (s >= F16_TINY)).all() and (m <= F16_MAX).all())


def pack_quantized(qtype: str, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                   block_group: torch.Tensor) -> np.ndarray:
    """Blocks of ``qtype`` from a QuantizedLinear's codes (rows, cols), scales and zeros (rows, groups).

    ``block_group[b]`` is the group of block ``b`` (columns ``32 b .. 32 b + 31``); each block
    repeats its group's scale (and minimum).
    """
    index = block_group.long()
    s = scales.double()[:, index]
    z = zeros.double()[:, index]
    m = (-s * z).numpy() if qtype in ("Q4_1", "Q5_1") else None
    return pack_codes(qtype, codes.numpy(), s.numpy(), m)
