"""RTN: round every weight to the nearest point of its group's min/max grid (data-free).

The baseline of the GPTQ paper (Frantar et al. 2022, https://arxiv.org/abs/2210.17323) and
of most weight-only quantization work. Grids: 2 to 8 bits, symmetric or asymmetric, one
grid per output channel (``group_size: -1``) or per group of consecutive inputs. Weights that
are exactly zero stay exactly zero (0 is always on the grid), so RTN after pruning keeps the
sparsity. The Linear is replaced by a :class:`netslim.nn.quantized.QuantizedLinear`.

With ``gguf: q4_0`` (or ``q4_1``, ``q5_0``, ``q5_1``, ``q8_0``) the grid is that GGUF block
type's: groups of 32, its bits and symmetry, and each group's float16 scale (and minimum)
fitted by a least-squares search (:mod:`netslim.ops.quant`), so that ``netslim export --to
gguf`` writes the layer's codes and scales unchanged and llama.cpp decodes exactly the
weights netslim evaluated. The K-quant types ``q4_k``, ``q5_k``, ``q6_k``, ``q3_k``
(:mod:`netslim.ops.kgrid`) apply to layers whose inputs are a multiple of 256; the others
take the 32-weight grid of :data:`~netslim.ops.quant.K_FALLBACK` (``q4_k`` -> ``q4_1``), recorded
per layer as ``gguf`` and ``gguf_fallback``.

Recipe:
    - method: rtn
      bits: 4
      group_size: 128        # -1 for per-channel
      sym: false
    # or, on a GGUF grid:
    - method: rtn
      gguf: q4_0
    # or with some layers on their own grid (``netslim search`` writes these):
    - method: gptq
      bits: 4
      layers:
        model.layers.0.mlp.down_proj: {bits: 8, group_size: 64}
        "*.v_proj": {bits: 3, group_size: 32}
"""

from __future__ import annotations

import fnmatch
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, model_validator

from netslim.engine.stats import LayerStats
from netslim.errors import ConfigError
from netslim.methods.base import LayerView, MethodConfig, ModelShape
from netslim.methods.registry import register_method
from netslim.ops.kgrid import K_GRIDS, SUPER_BLOCK
from netslim.ops.quant import GGUF_GRIDS, GGUFGrid, QuantizedWeight, check_grid, gguf_grid, quantize_rtn


class LayerGrid(BaseModel):
    """The grid of the layers one entry of :attr:`QuantizationConfig.layers` names."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bits: int
    group_size: int

    @model_validator(mode="after")
    def _check(self) -> LayerGrid:
        check_grid(self.bits, self.group_size)
        return self


class QuantizationConfig(MethodConfig):
    """The grid settings shared by ``rtn`` and ``gptq``.

    Attributes:
        bits: Bits per weight, 2 to 8.
        group_size: Inputs sharing one scale and zero point; -1 for one grid per output
            channel. Common choices: 32, 64, 128.
        sym: Symmetric grid (zero point fixed at the middle code) instead of min/max.
        gguf: Quantize on the grid of this GGUF block type (``q4_0``, ``q4_1``, ``q5_0``,
            ``q5_1``, ``q8_0``, or a K-quant ``q4_k``, ``q5_k``, ``q6_k``, ``q3_k``): it sets
            ``bits``, ``group_size`` (32, or a K-quant's sub-block) and ``sym``, and fits each
            group's float16 scale (and minimum) by least squares; the GGUF export then stores
            the layer exactly.
        layers: Per-layer grids: a full module name or ``fnmatch`` pattern -> its own
            ``bits`` and ``group_size`` (the first matching entry wins; the others take the
            stage's). A mixed-precision recipe in one stage and one pass.
    """

    bits: int = 4
    group_size: int = 128
    sym: bool = False
    layers: dict[str, LayerGrid] = {}
    gguf: Optional[Literal["q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "q3_k"]] = None

    @model_validator(mode="before")
    @classmethod
    def _gguf_grid(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("gguf") is None:
            return data
        name = str(data["gguf"]).lower()
        if name not in GGUF_GRIDS and name not in K_GRIDS:
            return data  # the Literal's own error names the valid types
        grid = gguf_grid(name, SUPER_BLOCK)  # the type's own grid (a layer too narrow for a K-quant falls back)
        implied = {"bits": grid.bits, "group_size": grid.group_size, "sym": grid.sym}
        for key, value in implied.items():
            if key in data and data[key] != value:
                raise ValueError(f"gguf={name} sets {key}={value}; remove {key}={data[key]} or the gguf setting")
        return {**data, **implied, "gguf": name}

    @model_validator(mode="after")
    def _check_grid(self) -> QuantizationConfig:
        check_grid(self.bits, self.group_size)
        if self.layers and self.gguf is not None:
            raise ValueError("per-layer grids (layers) and a gguf type cannot be combined; drop one")
        return self

    def produces(self) -> str:
        """Quantized layers."""
        return "quantized"

    def preflight(self, shape: ModelShape) -> None:
        """Also refuses a ``layers`` entry that names no layer the stage acts on."""
        touched = shape.touched(self)
        for pattern in self.layers:
            if not any(name == pattern or fnmatch.fnmatchcase(name, pattern) for name in touched):
                example = next(iter(touched), "model.layers.0.mlp.down_proj")
                raise ConfigError(f"{self.method}: layers entry '{pattern}' names no layer it quantizes "
                                  f"(layer names look like '{example}')")
        super().preflight(shape)

    def layer_grid(self, in_features: int, name: str = "") -> GGUFGrid:
        """The grid of layer ``name`` with ``in_features`` inputs: its entry in ``layers``,
        else ``gguf``'s (or its fallback's), else the stage's settings."""
        own = next((g for p, g in self.layers.items() if p == name or fnmatch.fnmatchcase(name, p)), None)
        if own is not None:
            return GGUFGrid(None, own.bits, own.group_size, self.sym)
        if self.gguf is None:
            return GGUFGrid(None, self.bits, self.group_size, self.sym)
        return gguf_grid(self.gguf, in_features)


def grid_fields(grid: GGUFGrid) -> dict:
    """The record fields of a layer's grid: its GGUF type and why it is not the requested one."""
    return {"sym": grid.sym, "gguf": grid.name, "gguf_fallback": grid.fallback}


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
    grid = cfg.layer_grid(weight.shape[1], layer.name)
    qweight = quantize_rtn(weight, grid.bits, grid.group_size, grid.sym, fit=grid.name is not None, kgrid=grid.kgrid)
    error = float((qweight.dequantize() - weight).square().sum() / weight.square().sum().clamp_min(1e-12))
    return {**install_quantized(layer, qweight), **grid_fields(grid), "relative_weight_error": error}
