"""RTN: round every weight to the nearest point of its group's min/max grid (data-free).

The baseline of the GPTQ paper (Frantar et al. 2022, https://arxiv.org/abs/2210.17323) and
of most weight-only quantization work. Grids: 2 to 8 bits, symmetric or asymmetric, one
grid per output channel (``group_size: -1``) or per group of consecutive inputs. Weights that
are exactly zero stay exactly zero (0 is always on the grid), so RTN after pruning keeps the
sparsity. The Linear is replaced by a :class:`netslim.nn.quantized.QuantizedLinear`.

Recipe:
    - method: rtn
      bits: 4
      group_size: 128        # -1 for per-channel
      sym: false
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from netslim.engine.stats import LayerStats
from netslim.methods.base import LayerView, MethodConfig
from netslim.methods.registry import register_method
from netslim.ops.quant import QuantizedWeight, check_grid, quantize_rtn


class QuantizationConfig(MethodConfig):
    """The grid settings shared by ``rtn`` and ``gptq``.

    Attributes:
        bits: Bits per weight, 2 to 8.
        group_size: Inputs sharing one scale and zero point; -1 for one grid per output
            channel. Common choices: 32, 64, 128.
        sym: Symmetric grid (zero point fixed at the middle code) instead of min/max.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False

    @model_validator(mode="after")
    def _check_grid(self) -> QuantizationConfig:
        check_grid(self.bits, self.group_size)
        return self

    def produces(self) -> str:
        """Quantized layers."""
        return "quantized"


class RTNConfig(QuantizationConfig):
    """Round-to-nearest settings (see :class:`QuantizationConfig`)."""

    method: Literal["rtn"] = "rtn"


def install_quantized(layer: LayerView, qweight: QuantizedWeight) -> dict:
    """Replace ``layer`` by a ``QuantizedLinear`` holding ``qweight``; return the report fields."""
    from netslim.nn.quantized import QuantizedLinear  # noqa: PLC0415  (keeps methods importable alone)

    bias = getattr(layer.module, "bias", None)
    module = QuantizedLinear.from_codes(
        qweight.codes, qweight.scales, qweight.zeros, qweight.bits, qweight.group_size, qweight.g_idx,
        None if bias is None else bias.detach().clone(),
    )
    layer.replace(module.to(layer.weight.device))
    zeros = float((qweight.dequantize() == 0).float().mean())  # the module has no .weight for the log to read
    return {"bits": qweight.bits, "group_size": qweight.group_size, "shape": list(qweight.codes.shape), "sparsity": zeros}


@register_method("rtn", RTNConfig)
def rtn(layer: LayerView, stats: LayerStats | None, cfg: RTNConfig) -> dict:
    """Quantize the layer's weight to the nearest grid point and swap in the quantized module."""
    weight = layer.weight.detach().float()
    qweight = quantize_rtn(weight, cfg.bits, cfg.group_size, cfg.sym)
    error = float((qweight.dequantize() - weight).square().sum() / weight.square().sum().clamp_min(1e-12))
    return {**install_quantized(layer, qweight), "sym": cfg.sym, "relative_weight_error": error}
