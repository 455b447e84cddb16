"""Parameter counts and bytes of a model (tied weights counted once, quantized weights counted)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSize:
    """Counts of one model."""

    params: int
    nonzero_params: int
    size_bytes: int

    def as_dict(self) -> dict:
        """Plain dict for reports."""
        return asdict(self)


def unique_parameters(model: nn.Module) -> Iterator[torch.Tensor]:
    """Each parameter tensor once, even when tied (embedding and LM head)."""
    seen = set()
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            yield p


def model_size(model: nn.Module) -> ModelSize:
    """Parameters, non-zero parameters, and the bytes the parameters take in memory.

    A :class:`QuantizedLinear` keeps its weight in buffers (codes, scales, zeros); it counts as
    its ``out x in`` weights and its bias, non-zero where the dequantized weight is, and the
    bytes of those buffers.
    """
    from netslim.nn.quantized import QuantizedLinear  # noqa: PLC0415  (import cycle via netslim.export)

    params = nonzero = size = 0
    for p in unique_parameters(model):
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
        size += p.numel() * p.element_size()
    for module in model.modules():
        if isinstance(module, QuantizedLinear):
            weight = module.dequantize()
            tensors = [module.codes, module.scales, module.zeros]
            extra = [] if module.bias is None else [module.bias]
            params += weight.numel() + sum(t.numel() for t in extra)
            nonzero += int(torch.count_nonzero(weight)) + sum(int(torch.count_nonzero(t)) for t in extra)
            size += sum(t.numel() * t.element_size() for t in tensors + extra)
    return ModelSize(params, nonzero, size)


def folder_weight_bytes(folder: str | Path) -> int:
    """Bytes of the ``*.safetensors`` files in a saved model folder."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
