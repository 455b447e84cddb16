"""Choosing each tensor's GGUF type and encoding its data.

- Norms and biases: always F32 (llama.cpp reads them as F32).
- Float weights: the requested type (``--type``; ``auto`` = F16); the embedding
  (``token_embd``) and an untied head (``output``) their own (``--embeddings``, ``--head``,
  by default ``--type``). Block types are quantized by netslim's search
  (:mod:`~netslim.export.gguf.floatquant`, optionally weighted by an importance vector per
  layer); rows whose length the type's blocks do not divide fall back (K-quants to a 32-block
  type, 32-block types to F16), the reason recorded. Pruned zeros are stored as values.
- Quantized layers (:class:`~netslim.nn.quantized.QuantizedLinear`): their codes unchanged in
  the K-quant type whose super-block structure their scales have (GPTQ or RTN with
  ``gguf: q4_k`` etc., :func:`netslim.ops.kgrid.recover`), else in the GGUF block type with the
  same grid (see :mod:`netslim.export.gguf.blocks`) when the groups are contiguous runs of a
  multiple of 32 columns; otherwise (3-bit, act-order
  ``g_idx``, groups of 16, 8-bit asymmetric, scales beyond float16) the dequantized weight
  in the requested float type (``auto`` = F16), with the reason recorded.

Each tensor gets a record for the summary: ``name``, ``source``, ``shape``, ``type``,
``exact`` (the stored values are the model's own: F32 of float32, or a quantized grid kept up
to float16 scales) and ``fallback_reason`` (why a quantized layer was dequantized, else ``None``).
"""

from __future__ import annotations

import numpy as np
import torch

from netslim.export.gguf import kquants
from netslim.export.gguf.blocks import QK, block_type_for, pack_quantized, scales_fit_f16
from netslim.export.gguf.floatquant import float_array, storage_type
from netslim.export.gguf.tensors import TensorSource, interleave_rotary_rows
from netslim.nn.quantized import QuantizedLinear
from netslim.ops.kgrid import K_GRIDS, SUPER_BLOCK, recover
from netslim.ops.quant import group_width

FLOAT_TYPES = {"auto": "F16", "f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0", "q6_k": "Q6_K",
               "q5_k": "Q5_K", "q5_1": "Q5_1", "q5_0": "Q5_0", "q4_k": "Q4_K", "q4_1": "Q4_1", "q4_0": "Q4_0",
               "q3_k": "Q3_K"}


def _grid_blocks(layer: QuantizedLinear) -> tuple[torch.Tensor | None, str | None]:
    """The group of every 32-column block, or ``(None, reason)`` when groups do not align with blocks."""
    cols = layer.in_features
    if cols % QK:
        return None, f"in_features {cols} is not a multiple of {QK}"
    width = group_width(cols, layer.group_size)
    if not torch.equal(layer.g_idx.long(), torch.arange(cols) // width):
        return None, "act-order groups (g_idx is not column // group_size): GGUF blocks are contiguous"
    if width % QK:
        return None, f"groups of {width} columns are not a multiple of {QK}"
    return layer.g_idx[::QK], None


def quantized_encoding(layer: QuantizedLinear) -> tuple[str | None, torch.Tensor | None, str | None]:
    """``(block type, group of each block, None)`` if ``layer`` is exact in GGUF, else ``(None, None, reason)``."""
    qtype, reason = block_type_for(layer.bits, layer.zeros)
    if qtype is None:
        return None, None, reason
    block_group, reason = _grid_blocks(layer)
    if block_group is None:
        return None, None, reason
    if not scales_fit_f16(layer.scales, layer.zeros):
        return None, None, "scales outside float16's range"
    return qtype, block_group, None


def k_encoding(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, layer: QuantizedLinear
               ) -> tuple[str, np.ndarray] | None:
    """``(K-quant type, super-blocks (rows, bytes))`` if ``layer``'s grid is a K-quant grid, else ``None``.

    ``codes``, ``scales``, ``zeros``: the layer's, rows already in GGUF order.
    """
    cols = layer.in_features
    if cols % SUPER_BLOCK or not torch.equal(layer.g_idx.long(), torch.arange(cols) // group_width(cols, layer.group_size)):
        return None
    for grid in K_GRIDS.values():
        if grid.bits != layer.bits or grid.sub != group_width(cols, layer.group_size):
            continue
        params = recover(scales, zeros, grid)
        if params is None:
            continue
        q = codes.numpy().astype(np.int16).reshape(-1, SUPER_BLOCK)
        q = q if grid.asym else q - grid.middle
        blocks = kquants.pack(grid.name, q, params.d, params.sc, params.dmin, params.mn)
        return grid.name, np.ascontiguousarray(blocks.reshape(codes.shape[0], -1))
    return None


def _float_type(requested: str, kind: str, cols: int) -> tuple[str, str | None]:
    if kind in ("norm", "bias"):
        return "F32", None
    return storage_type(FLOAT_TYPES[requested], cols)


def encode(source: TensorSource, requested: str, importance=None) -> tuple[np.ndarray, str, dict]:
    """``(data, GGUF type name, summary record)`` of one tensor.

    Args:
        requested: the type asked for this tensor (a key of :data:`FLOAT_TYPES`); quantized
            layers with a GGUF grid ignore it.
        importance: (in_features,) weights of the squared error per input channel, or ``None``.
    """
    if importance is not None:
        importance = importance.detach().to("cpu").double().numpy() if isinstance(importance, torch.Tensor) \
            else np.asarray(importance, dtype=np.float64)
    layer = source.quantized
    record = {"name": source.gguf_name, "source": source.hf_name, "fallback_reason": None}
    if layer is not None:
        record["shape"] = [layer.out_features, layer.in_features]
        record["bits"] = layer.bits
        rows = (layer.codes, layer.scales, layer.zeros)
        if source.rope_heads:  # permuting whole rows keeps every row's grid
            rows = tuple(interleave_rotary_rows(t, source.rope_heads) for t in rows)
        k = k_encoding(*rows, layer)
        if k is not None:
            return k[1], k[0], {**record, "type": k[0], "exact": True}
        qtype, block_group, reason = quantized_encoding(layer)
        if qtype is not None:
            data = pack_quantized(qtype, *rows, block_group)
            return data, qtype, {**record, "type": qtype, "exact": True}
        weight = layer.dequantize(torch.float32)
        weight = interleave_rotary_rows(weight, source.rope_heads) if source.rope_heads else weight
        qtype, rows_reason = _float_type(requested, "weight", layer.in_features)
        reason = f"{reason}; dequantized, {rows_reason}" if rows_reason else reason
        return float_array(weight, qtype, importance), qtype, {**record, "type": qtype, "exact": qtype == "F32",
                                                               "fallback_reason": reason}
    tensor = source.tensor
    qtype, reason = _float_type(requested, source.kind, tensor.shape[-1])
    record["shape"] = list(tensor.shape)
    exact = qtype == "F32" or (qtype == "F16" and tensor.dtype == torch.float16) or (
        qtype == "BF16" and tensor.dtype == torch.bfloat16)
    weighted = importance if source.kind == "weight" and tensor.dim() == 2 else None
    return float_array(tensor, qtype, weighted), qtype, {**record, "type": qtype, "exact": exact,
                                                         "fallback_reason": reason}
