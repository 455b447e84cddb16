"""Cheap proxies of the budget search: every option's cost in loss, from one statistics pass.

One statistics-only sweep of the dense model (:func:`netslim.engine.sweep.iter_block_stats`)
gives every decoder projection's input Hessian ``H = 2 X^T X / n``. Then, per projection:

1. GPTQ at the reference group size (128), once per bit width up to 4, gives the layer-output
   error GPTQ really reaches there (``~ ||(W - Q) X^T||^2 / n``);
2. round-to-nearest on every grid gives the same error measure, ``tr(dW H dW^T) / 2``, in one
   matrix product each; scaled by the layer's GPTQ/RTN ratio at the same bit width (the
   nearest one measured for wider grids) it estimates GPTQ's error on every grid without
   running GPTQ on every grid;
3. per block, quantizing only that block at the sensitivity grid (3-bit g128: a perturbation
   large enough to stand out of the noise of a few windows) and measuring the rise in
   next-token loss on held-out windows turns layer-output error into loss:
   ``sensitivity[b] = d_nll(b) / sum of the block's errors``, shrunk halfway toward the
   whole model's ratio (a few windows measure a block's rise only roughly).

4. per kind of projection (``q_proj``, ``down_proj``, ...), quantizing that kind in every block
   and measuring the rise the same way gives a factor on the block sensitivities: output
   errors of different kinds are not in the same units.

A projection's proxy for an option is ``sensitivity[block] * factor[kind] * error``: an estimate of the rise
in mean next-token loss (nats) the option adds, additive over projections, which the
allocation solver sums (:mod:`netslim.budget.allocate`).

:class:`Assembler` puts any choice of options on the model (GPTQ on the dense inputs, the
quantized weights kept for the next choice) to measure it end to end, and restores it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from netslim.budget.space import KEEP, Space, decoder_projections
from netslim.data.windows import TokenWindows
from netslim.engine.stats import Stat
from netslim.engine.sweep import iter_block_stats
from netslim.methods.gptq import gptq_quantize
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.ops.quant import QuantizedWeight, quantize_rtn
from netslim.recovery.teacher import window_losses

VERSION = 2  # of how proxies are measured: part of the cache key, so a changed method never reuses old ones
REFERENCE_GROUP = 128  # GPTQ runs on every layer at this group size (the nearest of the space's), per bit width
MEASURED_BITS = 4  # ... for every bit width up to this one (wider grids take the ratio of the nearest)
SENSITIVITY_BITS = 3  # the bit width (at the reference group) whose per-block loss rise is measured
SHRINK = 0.5  # a block's sensitivity is this share its own, the rest the whole model's
FLOOR = 0.25  # and at least this share of the whole model's
KIND_FLOOR = 0.1  # a kind's factor is at least this


@dataclass
class Proxies:
    """Per projection and option, the estimated rise in loss; per block and per kind of
    projection, its sensitivity.

    Attributes:
        errors: Projection -> option label -> estimated GPTQ layer-output error.
        blocks: Projection -> its block index.
        sensitivity: Block index -> nats of loss per unit of layer-output error.
        block_rise: Block index -> measured rise in loss with that block at the sensitivity grid.
        kinds: Kind of projection (``self_attn.v_proj``) -> factor on the block sensitivity:
            layer-output errors of different kinds are not in the same units (a ``q_proj``
            error passes a softmax, a ``down_proj`` one enters the residual stream), so each
            kind, quantized in every block at once, is measured too.
    """

    errors: dict[str, dict[str, float]]
    blocks: dict[str, int]
    sensitivity: dict[int, float] = field(default_factory=dict)
    block_rise: dict[int, float] = field(default_factory=dict)
    kinds: dict[str, float] = field(default_factory=dict)

    def loss(self, name: str, label: str) -> float:
        """The proxy of ``label`` on projection ``name``: estimated rise in loss (nats)."""
        if label == KEEP:
            return 0.0
        scale = self.sensitivity.get(self.blocks[name], 1.0) * self.kinds.get(kind_of(name), 1.0)
        return scale * self.errors[name][label]

    def as_dict(self) -> dict:
        return {"errors": self.errors, "blocks": self.blocks, "sensitivity": {str(k): v for k, v in self.sensitivity.items()},
                "block_rise": {str(k): v for k, v in self.block_rise.items()}, "kinds": self.kinds}

    @classmethod
    def from_dict(cls, data: dict) -> Proxies:
        return cls(data["errors"], data["blocks"], {int(k): v for k, v in data["sensitivity"].items()},
                   {int(k): v for k, v in data["block_rise"].items()}, data.get("kinds", {}))


def kind_of(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``self_attn.q_proj``: the projection's place in its block."""
    return re.sub(r"^.*?\.\d+\.", "", name, count=1)


def reference_labels(space: Space) -> tuple[dict[int, str], str]:
    """The grids GPTQ runs on for every layer (bit width -> label) and the sensitivity grid."""
    group = min(space.groups, key=lambda g: abs(g - REFERENCE_GROUP))
    bits = sorted(set(space.bits))
    measured = [b for b in bits if b <= MEASURED_BITS] or bits[:1]
    labels = {b: f"b{b} g{group}" for b in measured}
    sensitivity = min(measured, key=lambda b: abs(b - SENSITIVITY_BITS))
    return labels, labels[sensitivity]


def output_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(dW H dW^T) / 2`` with ``H = 2 X^T X / n``: the mean squared layer-output error."""
    delta = quantized - weight
    return float(((delta @ hessian) * delta).sum(dtype=torch.float64) / 2)


class Assembler:
    """Puts a choice of options on the model's projections and takes it off again.

    Keeps each projection's dense weight and input Hessian, and every GPTQ result it has
    computed (codes, about one byte per weight), so choices that share options cost only
    the new ones.
    """

    def __init__(self, adapter: ModelAdapter, space: Space):
        self.adapter, self.space = adapter, space
        self.modules = decoder_projections(adapter)
        self.dense = {name: linear_weight(m).detach().clone() for name, m in self.modules.items()}
        self.hessians: dict[str, torch.Tensor] = {}
        self.done: dict[tuple[str, str], QuantizedWeight] = {}

    def quantized(self, name: str, label: str) -> QuantizedWeight:
        """GPTQ (act-order) of the dense weight of ``name`` on grid ``label``, against its dense-input Hessian."""
        key = (name, label)
        if key not in self.done:
            grid = self.space.grid(label)
            weight = self.dense[name]
            result = gptq_quantize(weight, self.hessians[name].to(weight.device), grid.bits, grid.group_size,
                                   act_order=True, damp=self.space.damp)
            self.done[key] = result.qweight
        return self.done[key]

    @contextlib.contextmanager
    def applied(self, choice: dict[str, str], progress: bool = False) -> Iterator[None]:
        """The model with ``choice`` (projection -> label; unnamed ones stay dense) on it."""
        try:
            with torch.no_grad():
                for name, label in tqdm(choice.items(), desc="quantize", unit="layer", disable=not progress,
                                        leave=False):
                    weight = linear_weight(self.modules[name])
                    if label == KEEP:
                        weight.copy_(self.dense[name].half().to(weight.dtype))  # stored in 16 bits
                    else:
                        weight.copy_(self.quantized(name, label).dequantize().to(weight.dtype))
            yield
        finally:
            with torch.no_grad():
                for name in choice:
                    linear_weight(self.modules[name]).copy_(self.dense[name])


def measure_proxies(assembler: Assembler, calibration: TokenWindows, probe: torch.Tensor,
                    progress: bool = True, batch_size: int = 1) -> Proxies:
    """The sweep, the per-layer errors and the per-block sensitivities (module docstring).

    ``probe``: the held-out windows the per-block rise in loss is measured on; ``batch_size``:
    calibration windows per block forward of the sweep.
    """
    adapter, space = assembler.adapter, assembler.space
    references, probe_label = reference_labels(space)
    errors: dict[str, dict[str, float]] = {}
    blocks: dict[str, int] = {}
    sweep = iter_block_stats(adapter, calibration, frozenset({Stat.HESSIAN}), batch_size=batch_size)
    for index, stats in tqdm(sweep, desc="search: layer errors", unit="block", total=adapter.num_blocks,
                             disable=not progress):
        for group in adapter.block_input_groups(index):
            shared = stats.layers[group[0]].hessian.cpu()  # one Hessian per shared input
            for name in group:
                assembler.hessians[name] = shared
                blocks[name] = index
                weight = assembler.dense[name].float().cpu()
                rtn = {g.label: output_error(weight, quantize_rtn(weight, g.bits, g.group_size).dequantize(), shared)
                       for g in space.grids}
                ratios = {}
                for bits, label in references.items():
                    gptq = output_error(weight, assembler.quantized(name, label).dequantize().cpu(), shared)
                    ratios[bits] = gptq / rtn[label] if rtn[label] > 0 else 1.0
                errors[name] = {g.label: rtn[g.label] * ratios[min(ratios, key=lambda b: abs(b - g.bits))]
                                for g in space.grids}
    proxies = Proxies(errors, blocks)
    dense = window_losses(adapter.model, probe, progress=False).mean().item()
    for index in tqdm(range(adapter.num_blocks), desc="search: block sensitivity", unit="block", disable=not progress):
        names = [n for n, b in blocks.items() if b == index]
        with assembler.applied({n: probe_label for n in names}):
            proxies.block_rise[index] = window_losses(adapter.model, probe, progress=False).mean().item() - dense
    totals = {i: sum(errors[n][probe_label] for n, b in blocks.items() if b == i) for i in proxies.block_rise}
    overall = max(sum(proxies.block_rise.values()), 0.0) / max(sum(totals.values()), 1e-30)
    for index, rise in proxies.block_rise.items():
        own = rise / totals[index] if totals[index] > 0 else overall
        proxies.sensitivity[index] = max(SHRINK * own + (1 - SHRINK) * overall, FLOOR * overall)
    measure_kinds(assembler, proxies, probe, progress)
    return proxies


def measure_kinds(assembler: Assembler, proxies: Proxies, probe: torch.Tensor, progress: bool = True) -> None:
    """Set ``proxies.kinds``: per kind of projection, the measured rise in loss with that kind at
    the sensitivity grid in every block, over what the block sensitivities predict for it."""
    _, probe_label = reference_labels(assembler.space)
    dense = window_losses(assembler.adapter.model, probe, progress=False).mean().item()
    kinds = sorted({kind_of(n) for n in proxies.blocks})
    for kind in tqdm(kinds, desc="search: kind sensitivity", unit="kind", disable=not progress):
        names = [n for n in proxies.blocks if kind_of(n) == kind]
        with assembler.applied({n: probe_label for n in names}):
            rise = window_losses(assembler.adapter.model, probe, progress=False).mean().item() - dense
        predicted = sum(proxies.sensitivity[proxies.blocks[n]] * proxies.errors[n][probe_label] for n in names)
        proxies.kinds[kind] = max(rise / predicted, KIND_FLOOR) if predicted > 0 else 1.0


def model_nll(model: nn.Module, windows: torch.Tensor, progress: bool = False) -> float:
    """Mean next-token loss (nats) of ``model`` over ``windows``."""
    return window_losses(model, windows, progress=progress, desc="search: verify").mean().item()
