"""ggml's K-quant super-blocks, packed and decoded with numpy (netslim's own code).

A super-block holds ``QK_K = 256`` consecutive weights of one row, split into sub-blocks that
each have a small integer scale; one float16 ``d`` (and ``dmin``) scales those integers.
Bytes in file order, ``e`` the weight's index in the super-block::

    Q4_K (144 B) { f16 d; f16 dmin; u8 scales[12];            u8 qs[128]; }
    Q5_K (176 B) { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
        8 sub-blocks of 32 (sub-block e // 32), 6-bit unsigned sc[8] and mn[8]:
        w = (d * sc) * q - (dmin * mn),  q in 0..15 (Q4_K) or 0..31 (Q5_K)
        low 4 bits of q: qs[32 c + j], nibble s, for e = 64 c + 32 s + j (c < 4, j < 32)
        bit 4 of q (Q5_K): bit t of qh[j], for e = 32 t + j
        scales: bytes 0..3 = sc[i] | (sc[i+4] >> 4) << 6; bytes 4..7 = mn[i] | (mn[i+4] >> 4) << 6;
                bytes 8..11 = (sc[i+4] & 15) | (mn[i+4] & 15) << 4     (i < 4)

    Q6_K (210 B) { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }
        16 sub-blocks of 16 (sub-block e // 16), int8 scales:
        w = (d * scales[e // 16]) * (u - 32),  u in 0..63
        low 4 bits of u: ql[64 h + j], nibble s, for e = 128 h + 64 s + j (h < 2, j < 64)
        high 2 bits of u: bits 2t..2t+1 of qh[32 h + j], for e = 128 h + 32 t + j (t < 4, j < 32)

    Q3_K (110 B) { u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }
        16 sub-blocks of 16, 6-bit scales stored as v = sc + 32 (sc in -32..31):
        w = (d * sc[e // 16]) * (u - 4),  u in 0..7
        low 2 bits of u: bits 2t..2t+1 of qs[32 h + j], for e = 128 h + 32 t + j
        bit 2 of u: bit t of hmask[j], for e = 32 t + j
        scales: byte i (i < 8) = (v[i] & 15) | (v[i+8] & 15) << 4;
                byte 8 + i (i < 4) = sum over b < 4 of (v[4 b + i] >> 4) << 2 b

The products are float32 in that order (``d * sc`` first), as ggml computes them, so
:func:`decode` gives bit-identical values to ggml's (and ``gguf.quants.dequantize``'s).
:mod:`~netslim.export.gguf.kquantize` chooses the integers.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = {"Q3_K": 110, "Q4_K": 144, "Q5_K": 176, "Q6_K": 210}
E = np.arange(QK_K)


def _f16_bytes(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype="<f2").view(np.uint8).reshape(-1, 2)


def _f16_read(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view("<f2").reshape(-1).astype(np.float32)


def _bit_planes(values: np.ndarray, shift: int, width: int) -> np.ndarray:
    """``values`` (n, G, T, J) -> bytes (n, G, J): bits ``width * t`` up of byte ``[g, j]`` hold
    ``(values[g, t, j] >> shift)``'s low ``width`` bits."""
    mask = (1 << width) - 1
    out = np.zeros(values.shape[:2] + values.shape[3:], dtype=np.uint16)
    for t in range(values.shape[2]):
        out |= ((values[:, :, t, :].astype(np.uint16) >> shift) & mask) << (width * t)
    return out.astype(np.uint8)


def _pack_scales_4k(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    a = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    b = mn[:, :4] | ((mn[:, 4:] >> 4) << 6)
    c = (sc[:, 4:] & 15) | ((mn[:, 4:] & 15) << 4)
    return np.concatenate([a, b, c], axis=1).astype(np.uint8)


def _pack_scales_3k(sc: np.ndarray) -> np.ndarray:
    v = (sc.astype(np.int16) + 32).astype(np.uint8)
    low = (v[:, :8] & 15) | ((v[:, 8:] & 15) << 4)
    high = _bit_planes(v.reshape(-1, 1, 4, 4), 4, 2).reshape(-1, 4)
    return np.concatenate([low, high], axis=1)


def pack(qtype: str, q: np.ndarray, d: np.ndarray, sc: np.ndarray, dmin: np.ndarray | None = None,
         mn: np.ndarray | None = None) -> np.ndarray:
    """Super-blocks of ``qtype`` as (n, block bytes) uint8.

    Args:
        q: (n, 256) codes: ``q`` (Q4_K, Q5_K), ``u - 32`` (Q6_K) or ``u - 4`` (Q3_K).
        d: (n,) float16-representable scales; sc: (n, 8 or 16) integer sub-block scales.
        dmin, mn: (n,) and (n, 8), Q4_K and Q5_K only.
    """
    n = q.shape[0]
    if qtype in ("Q4_K", "Q5_K"):
        u = q.astype(np.uint8)
        qs = _bit_planes(u.reshape(n, 4, 2, 32), 0, 4).reshape(n, 128)
        parts = [_f16_bytes(d), _f16_bytes(dmin), _pack_scales_4k(sc, mn)]
        if qtype == "Q5_K":
            parts.append(_bit_planes(u.reshape(n, 1, 8, 32), 4, 1).reshape(n, 32))
        return np.concatenate(parts + [qs], axis=1)
    if qtype == "Q6_K":
        u = (q.astype(np.int16) + 32).astype(np.uint8)
        ql = _bit_planes(u.reshape(n, 2, 2, 64), 0, 4).reshape(n, 128)
        qh = _bit_planes(u.reshape(n, 2, 4, 32), 4, 2).reshape(n, 64)
        return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d)], axis=1)
    if qtype == "Q3_K":
        u = (q.astype(np.int16) + 4).astype(np.uint8)
        hmask = _bit_planes(u.reshape(n, 1, 8, 32), 2, 1).reshape(n, 32)
        qs = _bit_planes(u.reshape(n, 2, 4, 32), 0, 2).reshape(n, 64)
        return np.concatenate([hmask, qs, _pack_scales_3k(sc), _f16_bytes(d)], axis=1)
    raise ValueError(f"not a K-quant type: {qtype}")


def _scales_4k(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """12 scale bytes (n, 12) -> 6-bit sc (n, 8), mn (n, 8)."""
    s = s.astype(np.int32)
    i = np.arange(8)
    low = i < 4
    k = i % 4
    sc = np.where(low, s[:, k] & 63, (s[:, 8 + k] & 15) | ((s[:, k] >> 6) << 4))
    mn = np.where(low, s[:, 4 + k] & 63, (s[:, 8 + k] >> 4) | ((s[:, 4 + k] >> 6) << 4))
    return sc, mn


def decode(data: np.ndarray, qtype: str) -> np.ndarray:
    """Reference decoder: K-quant bytes (..., bytes) -> float32 weights (n, 256) per super-block."""
    b = np.ascontiguousarray(data).view(np.uint8).reshape(-1, BLOCK_BYTES[qtype]).astype(np.int32)
    if qtype in ("Q4_K", "Q5_K"):
        d, dmin = _f16_read(b[:, 0:2].astype(np.uint8)), _f16_read(b[:, 2:4].astype(np.uint8))
        sc, mn = _scales_4k(b[:, 4:16])
        qs = b[:, -128:]
        q = (qs[:, 32 * (E // 64) + E % 32] >> (4 * ((E // 32) % 2))) & 15
        if qtype == "Q5_K":
            q = q | (((b[:, 16:48][:, E % 32] >> (E // 32)) & 1) << 4)
        sub = E // 32
        scale = d[:, None] * sc.astype(np.float32)
        offset = dmin[:, None] * mn.astype(np.float32)
        return scale[:, sub] * q.astype(np.float32) - offset[:, sub]
    if qtype == "Q6_K":
        ql, qh, scales = b[:, :128], b[:, 128:192], b[:, 192:208].astype(np.uint8).view(np.int8)
        d = _f16_read(b[:, 208:210].astype(np.uint8))
        low = (ql[:, 64 * (E // 128) + E % 64] >> (4 * ((E // 64) % 2))) & 15
        high = (qh[:, 32 * (E // 128) + E % 32] >> (2 * ((E // 32) % 4))) & 3
        u = low | (high << 4)
        scale = d[:, None] * scales.astype(np.float32)
        return scale[:, E // 16] * (u - 32).astype(np.float32)
    if qtype == "Q3_K":
        hmask, qs, s = b[:, :32], b[:, 32:96], b[:, 96:108]
        d = _f16_read(b[:, 108:110].astype(np.uint8))
        k = np.arange(16)
        v = ((s[:, k % 8] >> (4 * (k // 8))) & 15) | (((s[:, 8 + k % 4] >> (2 * (k // 4))) & 3) << 4)
        low = (qs[:, 32 * (E // 128) + E % 32] >> (2 * ((E // 32) % 4))) & 3
        u = low | (((hmask[:, E % 32] >> (E // 32)) & 1) << 2)
        scale = d[:, None] * (v - 32).astype(np.float32)
        return scale[:, E // 16] * (u - 4).astype(np.float32)
    raise ValueError(f"not a K-quant type: {qtype}")
