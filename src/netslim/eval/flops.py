"""Multiply-accumulate counts (MACs) of one forward pass (parameters: :func:`netslim.eval.size.count_params`).

Counted: convolutions, linear layers, matrix products and scaled dot-product attention, the
operations that dominate the cost; element-wise work, norms and pooling are not counted.
FLOPs are conventionally ``2 * MACs``; ratios (the pruning targets) are the same either way.
Counting works on any model that runs, through a ``TorchFunctionMode`` (no tracing needed).

Example:
    >>> count_macs(model, (torch.randn(1, 3, 224, 224),))
    398_000_000
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


def _conv_macs(args, kwargs, out: torch.Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return out.numel() * weight.shape[1] * math.prod(weight.shape[2:])


def _linear_macs(args, kwargs, out: torch.Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return out.numel() * weight.shape[-1]


def _matmul_macs(args, kwargs, out: torch.Tensor) -> int:
    return out.numel() * args[0].shape[-1]


def _sdpa_macs(args, kwargs, out: torch.Tensor) -> int:
    q, k = args[0], args[1]
    scores = math.prod(q.shape[:-1]) * k.shape[-2]  # (..., L, S)
    return scores * q.shape[-1] + scores * out.shape[-1]


_COUNTERS = {
    F.conv1d: _conv_macs,
    F.conv2d: _conv_macs,
    F.conv3d: _conv_macs,
    F.linear: _linear_macs,
    torch.matmul: _matmul_macs,
    torch.bmm: _matmul_macs,
    torch.Tensor.matmul: _matmul_macs,
    torch.Tensor.__matmul__: _matmul_macs,
    torch.Tensor.bmm: _matmul_macs,
    F.scaled_dot_product_attention: _sdpa_macs,
}


class _MacCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        counter = _COUNTERS.get(func)
        if counter is not None and isinstance(out, torch.Tensor):
            self.macs += counter(args, kwargs, out)
        return out


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs: tuple | dict) -> int:
    """MACs of one forward pass of ``model`` on ``example_inputs`` (a tuple, or kwargs dict)."""
    was_training = model.training
    model.eval()
    counter = _MacCounter()
    try:
        with counter:
            if isinstance(example_inputs, dict):
                model(**example_inputs)
            else:
                model(*example_inputs)
    finally:
        model.train(was_training)
    return counter.macs
