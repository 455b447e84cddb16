"""Width pruning: physically remove attention heads and MLP neurons.

An, Zhao, Yu, Tang, Wang, "Fluctuation-based Adaptive Structured Pruning for Large Language
Models" (FLAP), AAAI 2024 (https://arxiv.org/abs/2312.11983); Ma, Fang, Wang, "LLM-Pruner",
NeurIPS 2023 (https://arxiv.org/abs/2305.11627) for the first-order Taylor score.

Coupled structures are removed together: a head is its q (k, v) rows and its o_proj columns;
a neuron is its gate/up rows and its down_proj column. With grouped-query attention either
whole key-value groups go (``gqa: kv``: a key-value head and every query head reading it) or
the same number of query heads goes from every group (``gqa: query``), so every block keeps
equal groups. Scores: ``magnitude`` (data-free), ``wanda`` (input norm times column weight),
``flap`` (input variance times squared column norm) and ``taylor`` (``|w * dL/dw|`` summed
over the structure; needs a backward pass). ``allocation: uniform`` gives every block the
same sizes (the config can express it); ``global`` ranks standardized scores across blocks,
weighting each unit by the parameters it frees (FLAP's adaptive structure). With
``compensate`` (default for ``flap``) the mean contribution of the removed channels becomes
a bias of o_proj / down_proj, added where the family has none.

All scores come from one pass of the dense model over the calibration windows; the cuts
follow once every block is scored.

Recipe:
    - method: width
      ratio: 0.2             # fraction of the blocks' projection parameters removed
      score: flap            # magnitude | wanda | flap | taylor
      allocation: global     # uniform | global
      gqa: kv                # kv | query
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from netslim.engine.records import RunLog
from netslim.engine.stats import LayerStats, Stat
from netslim.engine.step import BlockStep
from netslim.errors import ConfigError
from netslim.methods.base import Handler, MethodConfig, ModelShape, Scope, Sweep
from netslim.methods.registry import register_method
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter
from netslim.ops import structured as S


REFIT_NEEDS = frozenset({Stat.HESSIAN, Stat.MOMENTS})  # E[x x^T] and E[x] of the output projections' inputs


class WidthConfig(MethodConfig):
    """Width (head and neuron) pruning settings.

    Attributes:
        ratio: Fraction of the decoder blocks' projection parameters to remove, in (0, 1).
        score: How structures are ranked.
        allocation: ``uniform`` (same sizes in every block) or ``global`` (standardized scores
            compete across blocks).
        gqa: ``kv`` removes key-value groups whole; ``query`` removes query heads evenly from
            every group.
        compensate: Fold the removed channels' mean output into a bias; ``None`` means on for
            ``flap`` only.
        refit: Refit each output projection's kept input columns by least squares
            (:func:`netslim.ops.structured.refit_columns`: the removed channels regressed on the
            kept ones over the calibration states as they reach the block, earlier blocks
            already cut), its bias taking the rest; replaces ``compensate``. One more forward
            of each block over the calibration windows.
        prune_attention: Whether heads may be removed (else only neurons).
        taylor_windows: Calibration windows used for gradients with ``score: taylor``.
        block_units: Attention units (key-value groups, or query-head slices in ``query``
            mode) removed per block; filled in by the run (the allocation's decision, so the
            saved recipe replays exactly), may also be given by hand with ``block_neurons``
            (then ``ratio`` and ``allocation`` are not consulted).
        block_neurons: MLP neurons removed per block (see ``block_units``).
        neuron_multiple: Keep every block's MLP width a multiple of this (32 for GGUF's
            blocks, 256 for its K-quants, 64 or 128 for GPU kernels): each planned neuron
            count is moved to the nearest such width. Counts given by hand are kept.
    """

    method: Literal["width"] = "width"
    ratio: float = Field(default=0.2, gt=0.0, lt=1.0)
    score: Literal["magnitude", "wanda", "flap", "taylor"] = "flap"
    allocation: Literal["uniform", "global"] = "uniform"
    gqa: Literal["kv", "query"] = "kv"
    compensate: bool | None = None
    refit: bool = False
    prune_attention: bool = True
    taylor_windows: int = Field(default=8, ge=1)
    block_units: tuple[int, ...] | None = None
    block_neurons: tuple[int, ...] | None = None
    neuron_multiple: int = Field(default=1, ge=1)

    scope: ClassVar[Scope] = Scope.BLOCK

    @model_validator(mode="after")
    def _whole_model(self) -> WidthConfig:
        if self.ignore or self.true_sequential:
            raise ValueError("width scores and cuts every block together; ignore and true_sequential do not apply")
        if (self.block_units is None) != (self.block_neurons is None):
            raise ValueError("give both block_units and block_neurons (one entry per block), or neither")
        if self.block_units is not None and (len(self.block_units) != len(self.block_neurons)
                                             or min(self.block_units + self.block_neurons, default=0) < 0):
            raise ValueError("block_units and block_neurons need one non-negative count per block each")
        return self

    def preflight(self, shape: ModelShape) -> None:
        """Acts on float layers; afterwards the projections' widths are not known in advance."""
        if shape.adapter.spec.experts is not None:
            raise ConfigError(f"width: {shape.family} is a mixture of experts, and width does not resize routed "
                              "experts; prune them with wanda, sparsegpt or magnitude, or remove blocks with depth")
        if self.block_units is not None and len(self.block_units) != shape.num_blocks:
            raise ConfigError(f"width: block_units has {len(self.block_units)} entries; the model has "
                              f"{shape.num_blocks} blocks")
        super().preflight(shape)
        for layer in shape.layers.values():
            layer.in_features = layer.out_features = None

    @property
    def compensates(self) -> bool:
        """Whether bias compensation is applied (from the planning sweep's means; a refit
        brings its own)."""
        if self.refit:
            return False
        return self.score == "flap" if self.compensate is None else self.compensate

    @property
    def needs(self) -> frozenset[Stat]:
        """A refit reads each block's output projections' inputs in the pass that cuts it."""
        return REFIT_NEEDS if self.refit else frozenset()

    @property
    def sweep_needs(self) -> frozenset[Stat]:
        """What the planning sweep gathers: output projections' input moments for the
        activation scores and the compensation bias, gradients for ``taylor``."""
        needs = {Stat.MOMENTS} if self.score in ("wanda", "flap") or self.compensates else set()
        return frozenset(needs | ({Stat.GRADIENT} if self.score == "taylor" else set()))

    @property
    def needs_calibration(self) -> bool:
        """Every score but ``magnitude`` without compensation or refit reads calibration data."""
        return bool(self.sweep_needs or self.needs)


@dataclass
class BlockScores:
    """Scores of one block's removable units, lowest removed first.

    Attributes:
        head_units: Score per attention unit (a key-value group, or a slice of one query
            head per group in ``query`` mode), in removal order.
        head_order: Per unit, the query heads it removes.
        neurons: Score per MLP neuron.
        head_cost / neuron_cost: Parameters one unit frees.
        params: Weights of all the block's projections (what ``ratio`` is a fraction of).
    """

    head_units: torch.Tensor
    head_order: list[list[int]]
    neurons: torch.Tensor
    head_cost: int
    neuron_cost: int
    params: int


def _channel_scores(adapter, index, cfg, stats, grads, part: Literal["attn", "mlp"]) -> torch.Tensor:
    """Score per input channel of block ``index``'s attention or MLP output projection."""
    spec = adapter.spec
    out_path, in_paths = (spec.attn_out, spec.attn_in[:1]) if part == "attn" else (spec.mlp_out, spec.mlp_in)
    w_out = adapter.block_part(index, out_path).weight.data
    w_ins = [adapter.block_part(index, p).weight.data for p in in_paths]
    if cfg.score == "magnitude":
        return S.magnitude_scores(w_out, w_ins)
    if cfg.score == "wanda":
        return S.wanda_scores(w_out, stats)
    if cfg.score == "flap":
        return S.fluctuation_scores(w_out, stats)
    prefix = adapter.block_name(index)
    pairs = [(w_out, grads[f"{prefix}.{out_path}"].grad, 1)]
    pairs += [(w, grads[f"{prefix}.{p}"].grad, 0) for w, p in zip(w_ins, in_paths)]
    return S.taylor_scores(pairs)


def _block_scores(adapter, index, cfg, stats, grads) -> BlockScores:
    hd, hidden = adapter.head_dim, adapter.hidden_size
    n_q, n_kv = surgery.head_counts(adapter, index)
    group = n_q // n_kv
    heads = S.group_scores(_channel_scores(adapter, index, cfg, stats and stats[0], grads, "attn"), hd)
    mlp = _channel_scores(adapter, index, cfg, stats and stats[1], grads, "mlp")
    neuron_cost = hidden * (len(adapter.spec.mlp_in) + 1)
    params = sum(m.weight.numel() for m in adapter.block_linears(index).values())
    if not cfg.prune_attention:
        return BlockScores(torch.zeros(0), [], mlp, 0, neuron_cost, params)
    if cfg.gqa == "kv" or group == 1:
        units = heads.reshape(n_kv, group).mean(1)
        order = torch.argsort(units).tolist()
        members = [list(range(g * group, (g + 1) * group)) for g in order]
        return BlockScores(units[order], members, mlp, 2 * (group + 1) * hd * hidden, neuron_cost, params)
    ranked = torch.argsort(heads.reshape(n_kv, group), dim=1)  # (n_kv, group): heads, lowest first
    slices = [[g * group + int(ranked[g, k]) for g in range(n_kv)] for k in range(group)]
    units = torch.stack([heads[s].mean() for s in slices])
    return BlockScores(units, slices, mlp, 2 * n_kv * hd * hidden, neuron_cost, params)  # k/v stay: not in any unit


def _plan(scores: list[BlockScores], cfg: WidthConfig) -> list[tuple[int, int]]:
    """(head units, neurons) to remove per block."""
    if cfg.block_units is not None:
        for index, (units, neurons) in enumerate(zip(cfg.block_units, cfg.block_neurons)):
            if units > scores[index].head_units.numel() or neurons >= scores[index].neurons.numel():
                raise ConfigError(f"width: block {index} cannot lose {units} attention units and {neurons} "
                                  f"neurons (it has {scores[index].head_units.numel()} and "
                                  f"{scores[index].neurons.numel()})")
        return list(zip(cfg.block_units, cfg.block_neurons))
    if cfg.allocation == "uniform":
        plan = [_uniform(s, cfg.ratio) for s in scores]
    else:
        plan = _global(scores, cfg)
    return [(units, _round_neurons(s.neurons.numel(), neurons, cfg.neuron_multiple))
            for s, (units, neurons) in zip(scores, plan)]


def _round_neurons(width: int, removed: int, multiple: int) -> int:
    """``removed`` moved so that ``width - removed`` is the nearest positive multiple of ``multiple``
    that fits in ``width``; unchanged when none does."""
    if multiple == 1 or width < multiple:
        return removed
    kept = min(multiple * (width // multiple), max(multiple, multiple * round((width - removed) / multiple)))
    return width - kept


def _global(scores: list[BlockScores], cfg: WidthConfig) -> list[tuple[int, int]]:
    """(head units, neurons) to remove per block under the global allocation."""
    pools, candidates = {}, []
    for index, s in enumerate(scores):
        for kind, values, cost in (("attn", s.head_units, s.head_cost), ("mlp", s.neurons, s.neuron_cost)):
            pools[(index, kind)] = values.numel()
            order = torch.argsort(values)
            standard = S.standardize(values.float())
            candidates += [S.Candidate((index, kind), r, float(standard[i]), cost) for r, i in enumerate(order.tolist())]
    removed = S.global_allocation(candidates, int(cfg.ratio * sum(s.params for s in scores)), pools)
    return [(removed[(i, "attn")], removed[(i, "mlp")]) for i in range(len(scores))]


def _uniform(s: BlockScores, ratio: float) -> tuple[int, int]:
    if s.head_units.numel() == 0:
        return 0, min(round(ratio * s.params / s.neuron_cost), s.neurons.numel() - 1)
    return S.uniform_counts(s.head_units.numel(), s.head_cost, s.neurons.numel(), s.neuron_cost, ratio, s.params)


def score_blocks(cfg: WidthConfig, adapter: ModelAdapter, sweep: Sweep | None,
                 ) -> tuple[list[BlockScores], list[tuple | None]]:
    """Every block's scores from one sweep of the model as it is, and per block the input
    moments of its attention and MLP output projections (``None`` when the score and the
    compensation read no data).

    Raises:
        ConfigError: the family cannot be resized, or the score needs data and ``sweep`` is ``None``.
    """
    surgery.check_width_supported(adapter)
    needs = cfg.sweep_needs
    if needs and sweep is None:
        raise ConfigError(f"width pruning with score '{cfg.score}' needs calibration data; pass calibration windows")
    moments: list[tuple | None] = [None] * adapter.num_blocks
    grads: list[dict | None] = [None] * adapter.num_blocks
    if needs:
        outputs = (adapter.spec.attn_out, adapter.spec.mlp_out)
        reads = tuple(f".{path}" for path in outputs)  # FLAP's moments: the output projections' inputs only
        for index, block in sweep(needs, gradient_windows=cfg.taylor_windows, layers=lambda n: n.endswith(reads)):
            prefix = adapter.block_name(index)
            if Stat.MOMENTS in needs:
                moments[index] = tuple(block.layers[f"{prefix}.{path}"].moments for path in outputs)
            grads[index] = block.layers if Stat.GRADIENT in needs else None
    return [_block_scores(adapter, i, cfg, moments[i], grads[i]) for i in range(adapter.num_blocks)], moments


def cut_block(adapter: ModelAdapter, index: int, s: BlockScores, n_units: int, n_neurons: int, stats,
              cfg: WidthConfig, refit: tuple[LayerStats, LayerStats] | None = None) -> dict:
    """Remove the ``n_units`` lowest attention units and ``n_neurons`` lowest MLP neurons of
    block ``index`` (by ``s``, with ``stats`` the moments of :func:`score_blocks` for the
    compensation); ``refit``: the statistics of the attention and MLP output projections'
    inputs to refit their kept columns by. Returns the block's report fields."""
    spec, hd = adapter.spec, adapter.head_dim
    n_q, n_kv = surgery.head_counts(adapter, index)
    removed_q = torch.tensor(sorted(h for unit in s.head_order[:n_units] for h in unit), dtype=torch.long)
    removed_n = S.lowest(s.neurons, n_neurons)
    cuts = ((spec.attn_out, surgery.head_rows(removed_q, hd)), (spec.mlp_out, removed_n))
    for part, (path, removed) in enumerate(cuts):
        if not removed.numel() or not (cfg.compensates or refit):
            continue
        out = adapter.block_part(index, path)
        w = out.weight.data
        if refit is None:
            surgery.add_bias(out, S.compensation_bias(w, stats[part].mean, removed))
            continue
        signal = refit[part]
        kept, bias = S.refit_columns(w, signal.hessian / 2, signal.moments.mean, removed)
        w[:, S.complement(w.shape[1], removed)] = kept.to(w.dtype)
        surgery.add_bias(out, bias)
    if removed_q.numel():
        keep_q = S.complement(n_q, removed_q)
        group = n_q // n_kv
        keep_kv = torch.unique(keep_q // group) if cfg.gqa == "kv" or group == 1 else torch.arange(n_kv)
        surgery.prune_heads(adapter, index, keep_q, keep_kv)
    if removed_n.numel():
        surgery.prune_neurons(adapter, index, S.complement(s.neurons.numel(), removed_n))
    heads, kv_heads = surgery.head_counts(adapter, index)
    return {"heads": heads, "kv_heads": kv_heads, "intermediate": surgery.intermediate_size(adapter, index),
            "removed_heads": removed_q.tolist(), "removed_neurons": int(removed_n.numel())}


@register_method("width", WidthConfig)
class WidthHandler(Handler):
    """Plan: score every block on the model as it enters the stage and allocate the removals;
    act: cut each block; finish: write the new widths into the config."""

    def plan(self, cfg: WidthConfig, adapter: ModelAdapter, sweep: Sweep | None) -> WidthConfig:
        """Scores of every block (one sweep of the dense model) and the per-block counts,
        returned in the config (``block_units``, ``block_neurons``)."""
        self.scores, self.moments = score_blocks(cfg, adapter, sweep)
        plan = _plan(self.scores, cfg)
        return cfg.model_copy(update={"block_units": tuple(u for u, _ in plan), "block_neurons": tuple(n for _, n in plan)})

    def act_block(self, cfg: WidthConfig, step: BlockStep) -> None:
        """Cut the block's planned heads and neurons."""
        adapter, index = step.adapter, step.index
        units, neurons = cfg.block_units[index], cfg.block_neurons[index]
        refit = None
        if cfg.refit and (units or neurons):
            paths = (adapter.spec.attn_out, adapter.spec.mlp_out)
            signals = step.signals({path: REFIT_NEEDS for path in paths})
            refit = (signals[paths[0]], signals[paths[1]])
        extra = cut_block(adapter, index, self.scores[index], units, neurons, self.moments[index], cfg, refit)
        for name, module in adapter.block_linears(index).items():
            step.record(name, module, cfg.method, extra if name.endswith(adapter.spec.attn_out) else None)

    def finish(self, cfg: WidthConfig, adapter: ModelAdapter, log: RunLog) -> None:
        """The config states the new per-block widths."""
        surgery.sync_config(adapter)
