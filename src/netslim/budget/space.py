"""The search space of the budget search, and the exact stored size of each of its options.

Every decoder projection either keeps its float weight (stored in 16 bits) or is quantized by
GPTQ (act-order, static groups) on one grid of the space: ``bits`` x ``group_size``. A
choice of one option per projection is a single ``gptq`` stage whose ``layers`` setting
names the projections that leave the stage's grid (:func:`allocation_recipe`), so the search
result replays as one recipe in one pass.

Sizes are computed with the storage codecs themselves on an empty layer of the same shape
(:func:`option_bytes`): a quantized layer's codes and zero points are packed at the layer's
own bit width (:func:`netslim.export.storage.declared_widths`), so what is predicted here is
what ``netslim.safetensors`` holds, to the byte.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from netslim.errors import ConfigError
from netslim.export.codecs import choose_codec, encoded_bytes
from netslim.export.storage import declared_widths, unique_state
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.ops.quant import check_grid, max_code

KEEP = "keep"  # the label of the option that leaves a projection in float (16-bit storage)
BITS = (3, 4, 8)  # 2 bits on request: its proxy is the least reliable (see docs/search.md)
GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class Grid:
    """One quantization grid of the space."""

    bits: int
    group_size: int

    @property
    def label(self) -> str:
        return f"b{self.bits} g{self.group_size}"


@dataclass(frozen=True)
class Space:
    """The options every decoder projection chooses from.

    Attributes:
        bits / groups: The grids are every ``bits`` x ``groups`` pair.
        keep: Whether a projection may stay in float.
        damp: GPTQ's dampening.
    """

    bits: tuple[int, ...] = BITS
    groups: tuple[int, ...] = GROUPS
    keep: bool = True
    damp: float = 0.01

    def __post_init__(self) -> None:
        if not self.bits or not self.groups:
            raise ConfigError("the search space needs at least one bit width and one group size")
        for bits in self.bits:
            for group in self.groups:
                try:
                    check_grid(bits, group)
                except ValueError as exc:
                    raise ConfigError(f"search space: {exc}") from None

    @property
    def grids(self) -> list[Grid]:
        return [Grid(b, g) for b in sorted(set(self.bits)) for g in sorted(set(self.groups))]

    def labels(self) -> list[str]:
        return [g.label for g in self.grids] + ([KEEP] if self.keep else [])

    def grid(self, label: str) -> Grid:
        found = next((g for g in self.grids if g.label == label), None)
        if found is None:
            raise ConfigError(f"'{label}' is not an option of this search space ({', '.join(self.labels())})")
        return found

    def as_dict(self) -> dict:
        return {"bits": sorted(set(self.bits)), "groups": sorted(set(self.groups)), "keep": self.keep,
                "damp": self.damp, "method": "gptq", "act_order": True}


def decoder_projections(adapter: ModelAdapter) -> dict[str, nn.Module]:
    """Full name -> module of every projection in the decoder blocks, in block order."""
    return {name: module for i in range(adapter.num_blocks) for name, module in adapter.block_linears(i).items()}


def option_bytes(module: nn.Module, label: str, space: Space) -> int:
    """The exact stored bytes of projection ``module`` (weight parts and bias) under option ``label``."""
    from netslim.nn.quantized import QuantizedLinear  # noqa: PLC0415  (an nn module, not an engine import)

    weight = linear_weight(module)
    bias = getattr(module, "bias", None)
    out_features, in_features = weight.shape
    if label == KEEP:  # float tensors beside quantized layers are stored in 16 bits
        return 2 * (weight.numel() + (0 if bias is None else bias.numel()))
    grid = space.grid(label)
    empty = QuantizedLinear(in_features, out_features, grid.bits, grid.group_size, bias is not None)
    empty.codes.fill_(max_code(grid.bits))
    empty.zeros.fill_(max_code(grid.bits))
    empty.scales.fill_(0.5)  # not integers: real scales are stored dense, never bit-packed
    widths = {name.removeprefix("."): bits for name, bits in declared_widths(empty).items()}
    total = 0
    for name, tensor in empty.state_dict().items():
        total += encoded_bytes(tensor, choose_codec(tensor, None, widths.get(name)), None, widths.get(name))
    return total


def fixed_bytes(model: nn.Module, projections: dict[str, nn.Module]) -> int:
    """The exact stored bytes of everything but the decoder projections (embeddings, norms,
    head: floats in 16 bits, as beside quantized layers)."""
    state, _ = unique_state(model.state_dict())
    prefixes = tuple(f"{name}." for name in projections)
    rest = {name: tensor for name, tensor in state.items() if not name.startswith(prefixes)}
    half = torch.bfloat16 if any(t.dtype == torch.bfloat16 for t in rest.values()) else torch.float16
    total = 0
    for tensor in rest.values():
        dtype = half if tensor.is_floating_point() and tensor.element_size() > 2 else None
        total += encoded_bytes(tensor, choose_codec(tensor, dtype), dtype)
    return total


def allocation_recipe(choice: dict[str, str], space: Space) -> list[dict]:
    """The one-stage recipe of a choice (projection -> option label): ``gptq`` on the most
    common grid, ``layers`` for the projections on another, ``ignore`` for those kept."""
    grids = Counter(label for label in choice.values() if label != KEEP)
    if not grids:
        raise ConfigError("the allocation quantizes no layer; the budget allows the dense model")
    main = space.grid(grids.most_common(1)[0][0])
    layers = {name: {"bits": space.grid(label).bits, "group_size": space.grid(label).group_size}
              for name, label in choice.items() if label not in (KEEP, main.label)}
    stage = {"method": "gptq", "bits": main.bits, "group_size": main.group_size, "act_order": True,
             "damp": space.damp, "layers": layers, "ignore": [name for name, label in choice.items() if label == KEEP]}
    return [stage]
