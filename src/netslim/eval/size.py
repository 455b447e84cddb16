"""Parameter counts and bytes of a model (tied weights counted once, quantized weights counted)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def unique_parameters(params: nn.Module | Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Each parameter tensor of a model (or of a collection of tensors) once, even when tied
    (embedding and LM head): the same object, or two parameters on the same memory. Meta and
    empty tensors have no memory of their own and are told apart by object (so counting works
    on the meta device too)."""
    seen = set()
    for p in params.parameters() if isinstance(params, nn.Module) else params:
        key = ("ptr", p.data_ptr()) if p.numel() and p.device.type != "meta" else ("id", id(p))
        if key not in seen:
            seen.add(key)
            yield p


def count_params(model: nn.Module | Iterable[torch.Tensor]) -> int:
    """Parameters of ``model`` (or of a collection of tensors), each tensor counted once even when tied.

    The one parameter counter: :func:`model_size` adds the weights quantized layers keep in
    buffers to it.
    """
    return sum(p.numel() for p in unique_parameters(model))


def _is_quantized(module: nn.Module) -> bool:
    """A :class:`netslim.nn.quantized.QuantizedLinear` (by its registered module kind, which
    needs no import of :mod:`netslim.nn`: that package imports :mod:`netslim.export`, which
    imports this module)."""
    return getattr(type(module), "netslim_kind", None) == "quantized"


def model_size(model: nn.Module) -> ModelSize:
    """Parameters, non-zero parameters, and the bytes the parameters take in memory.

    A :class:`QuantizedLinear` keeps its weight in buffers (codes, scales, zeros); it counts as
    its ``out x in`` weights and its bias, non-zero where the dequantized weight is, and the
    bytes of those buffers. Tensors on the meta device (not loaded) are not counted.
    """
    params = nonzero = size = 0
    for p in unique_parameters(model):
        if p.is_meta:  # a block an offloaded run has not loaded
            continue
        params += p.numel()
        nonzero += int(torch.count_nonzero(p))
        size += p.numel() * p.element_size()
    for module in model.modules():
        if _is_quantized(module) and not module.codes.is_meta:
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
