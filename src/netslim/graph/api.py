"""``prune_channels``: structured pruning of any traceable model to a parameter or FLOP target.

Method: DepGraph (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning",
arXiv:2301.12900): channels coupled across layers are removed together, so the result is a
smaller dense model. Importance criteria are in :mod:`netslim.graph.importance`.

Example:
    >>> import netslim
    >>> cfg = netslim.ChannelPruneConfig(ratio=0.5, measure="macs", importance="l2", round_to=8)
    >>> result = netslim.prune_channels(model, (torch.randn(1, 3, 224, 224),), cfg)
    >>> result.after["macs"] / result.before["macs"]   # about 0.5
    >>> netslim.graph.save_pruned(result.model, result.plan, "slim/")
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from netslim.errors import ConfigError, refuse_renamed
from netslim.eval.flops import count_macs
from netslim.eval.latency import interleaved_ms
from netslim.eval.size import count_params
from netslim.graph.allocation import select_units
from netslim.graph.build import build_graph
from netslim.graph.dependency import DependencyGraph
from netslim.graph.errors import GraphPruneError
from netslim.graph.importance import Importance, group_scores
from netslim.graph.plan import SlimPlan


class ChannelPruneConfig(BaseModel):
    """Settings of :func:`prune_channels` (a typo in any field is an error).

    Attributes:
        importance: ``l1``, ``l2``, ``bn_scale``, ``taylor`` or ``random``.
        ratio: Fraction to remove, in (0, 1): of the parameters or of the MACs (``measure``).
        measure: ``params`` (default) or ``macs`` (multiply-accumulates, i.e. FLOPs / 2).
        params_of: What a ``params`` ratio is a fraction of: ``model`` (every parameter) or
            ``prunable`` (the parameters held by modules the graph can cut, e.g. the encoder
            layers of a BERT model but not its embeddings; see :func:`prunable_params`).
        allocation: ``uniform`` removes the same fraction of every group; ``global`` ranks
            units of all groups together (scores normalized by their group's mean).
        round_to: Keep a multiple of this many units per group (hardware-friendly widths).
        max_group_ratio: Never remove more than this fraction of one group.
        ignore: ``fnmatch`` patterns of module names never cut (nor the channels they touch).
        steps: Prune in this many steps, re-scoring between them.
        seed: Seed of the ``random`` criterion.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    importance: Importance = Importance.L1
    ratio: float = Field(gt=0, lt=1)
    measure: Literal["params", "macs"] = "params"
    params_of: Literal["model", "prunable"] = "model"
    allocation: Literal["uniform", "global"] = "uniform"
    round_to: int = Field(1, ge=1)
    max_group_ratio: float = Field(0.9, gt=0, lt=1)
    ignore: tuple[str, ...] = ()
    steps: int = Field(1, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _params_of_params(self) -> ChannelPruneConfig:
        if self.params_of == "prunable" and self.measure != "params":
            raise ValueError("params_of='prunable' applies to measure: params only; drop it or measure params")
        return self


@dataclass
class ChannelPruneResult:
    """What :func:`prune_channels` returns.

    Attributes:
        model: The pruned model (the input model, cut in place).
        plan: The cuts made, replayable on a fresh model (:meth:`SlimPlan.apply`).
        before, after: ``params`` and ``macs`` (and ``latency_ms`` when measured); with
            ``params_of="prunable"``, ``before`` also has ``prunable_params``.
        groups: Per group: name, units before and after.
        seconds: Wall time of the pruning.
    """

    model: nn.Module
    plan: SlimPlan
    before: dict
    after: dict
    groups: list[dict] = field(default_factory=list)
    seconds: float = 0.0


LATENCY_RUNS, LATENCY_WARMUP = 10, 2  # timed and warm-up forward passes of ``latency=True``


def measure(model: nn.Module, example_inputs: tuple, latency: bool = False) -> dict:
    """``params``, ``macs`` and, if asked, the median CPU ``latency_ms`` of 10 forward passes
    (after 2 warm-up passes; the model is put in eval mode first)."""
    out = {"params": count_params(model), "macs": count_macs(model, example_inputs)}
    if latency:
        model.eval()
        timed = interleaved_ms({"model": model}, lambda m: m(*example_inputs), LATENCY_RUNS, LATENCY_WARMUP)
        out["latency_ms"] = timed["model"]
    return out


def prunable_params(graph: DependencyGraph) -> int:
    """Parameters of the modules that have a prunable channel: the denominator of ``params_of="prunable"``.

    Every parameter held directly by such a module counts (a classifier reading pruned features
    counts whole); a tensor shared by several modules counts once; modules matched by
    ``ignore`` do not count.
    """
    names = {name for group in graph.groups() for name, _ in group.members}
    return count_params(p for name in names for p in graph.model.get_submodule(name).parameters(recurse=False))


def prune_channels(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor,
    config: ChannelPruneConfig | dict,
    *,
    loss_fn: Callable[[nn.Module], torch.Tensor] | None = None,
    latency: bool = False,
) -> ChannelPruneResult:
    """Remove coupled channels of ``model`` in place until the target is reached.

    Args:
        model: Any ``torch.fx``-traceable module, or a ``transformers`` BERT-style encoder.
        example_inputs: Positional inputs of one forward pass (used to trace and to count MACs);
            a single tensor is taken as the only input.
        config: A :class:`ChannelPruneConfig` or a mapping of its fields.
        loss_fn: ``loss_fn(model) -> scalar``; needed by the ``taylor`` criterion.
        latency: Also measure CPU latency before and after.

    Raises:
        ConfigError: on bad settings, or inputs the model does not run on.
        GraphTraceError: if the model cannot be traced.
        GraphPruneError: if the pruned model no longer runs.
    """
    cfg = config if isinstance(config, ChannelPruneConfig) else _parse(config)
    if cfg.importance is Importance.TAYLOR and loss_fn is None:
        raise ConfigError("importance 'taylor' needs loss_fn=, a function model -> scalar loss")
    example_inputs = _as_inputs(example_inputs)
    start = time.perf_counter()
    key = cfg.measure
    reference = _shapes(model, example_inputs, pruned=False)
    before = measure(model, example_inputs, latency)
    plan, report, total = SlimPlan(), [], before[key]
    for step in range(1, cfg.steps + 1):
        graph = build_graph(model, example_inputs, cfg.ignore)
        if step == 1 and cfg.params_of == "prunable":
            total = before["prunable_params"] = prunable_params(graph)
        goal = before[key] - total * cfg.ratio * step / cfg.steps
        units, report = _solve(graph, cfg, example_inputs, key, goal, loss_fn, total)
        plan.cuts.extend(graph.prune(units))
    if _shapes(model, example_inputs) != reference:
        raise GraphPruneError("the pruned model's output shapes changed; report this model to netslim")
    after = measure(model, example_inputs, latency)
    return ChannelPruneResult(model, plan, before, after, report, time.perf_counter() - start)


def _parse(config: dict) -> ChannelPruneConfig:
    from pydantic import ValidationError  # noqa: PLC0415

    refuse_renamed(config, ChannelPruneConfig.model_fields)
    try:
        return ChannelPruneConfig(**config)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, err['loc'])) or 'config'}: {err['msg']}") from None


def _as_inputs(example_inputs) -> tuple:
    """``example_inputs`` as a tuple of positional inputs (a single tensor is wrapped)."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)):
        raise ConfigError(f"example_inputs must be a tuple of the model's positional inputs, got {type(example_inputs).__name__}")
    return tuple(example_inputs)


@torch.no_grad()
def _shapes(model: nn.Module, example_inputs: tuple, pruned: bool = True) -> list:
    """Shapes of the model's output tensors; a failure is the cut's fault only after pruning."""
    was_training = model.training
    model.eval()
    try:
        out = model(*example_inputs)
    except Exception as exc:  # noqa: BLE001  (any failure: the inputs do not fit, or the cut broke the model)
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not pruned:
            raise ConfigError(f"the model does not run on example_inputs: {detail}") from None
        raise GraphPruneError(f"the pruned model no longer runs: {detail}") from exc
    finally:
        model.train(was_training)
    leaves = tree_flatten(out)[0]
    return [tuple(t.shape) for t in leaves if isinstance(t, torch.Tensor)]


def _meta_copy(graph: DependencyGraph, example_inputs: tuple) -> tuple[DependencyGraph, tuple]:
    """A copy of the graph on the meta device (shapes only), when the model runs there."""
    meta = copy.deepcopy(graph)
    meta.model.to("meta")
    inputs = tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, example_inputs)
    try:
        count_macs(meta.model, inputs)
    except Exception:  # noqa: BLE001  (data-dependent code cannot run on meta: use real tensors)
        return graph, example_inputs
    return meta, inputs


def _solve(graph: DependencyGraph, cfg, example_inputs, key: str, goal: float, loss_fn, total: float):
    """Bisect the pruning ratio until the measured ``key`` is at most ``goal`` (``total``: the target's denominator)."""
    if cfg.importance is Importance.TAYLOR:
        graph.model.zero_grad()
        loss_fn(graph.model).backward()
    groups = graph.groups()
    scores = [group_scores(graph, g, cfg.importance, cfg.seed) for g in groups]
    graph.roots()  # computed once, shared by the trial copies
    base, inputs = _meta_copy(graph, example_inputs)

    def trial(ratio: float) -> float:
        copy_ = copy.deepcopy(base)
        copy_.prune(select_units(groups, scores, ratio, cfg))
        return measure(copy_.model, inputs)[key]

    low, high = 0.0, 1.0
    if trial(high) > goal:
        what = "prunable params" if cfg.params_of == "prunable" else key
        raise ConfigError(
            f"the target cannot be reached: at most {(measure(graph.model, example_inputs)[key] - trial(high)) / total:.1%} "
            f"of {what} is removable under max_group_ratio={cfg.max_group_ratio}, round_to={cfg.round_to}"
        )
    for _ in range(14):
        mid = (low + high) / 2
        low, high = (low, mid) if trial(mid) <= goal else (mid, high)
    units = select_units(groups, scores, high, cfg)
    report = [{"group": g.name, "units": len(g.units), "kept": len(g.units) - len(set(g.units) & units)} for g in groups]
    return units, report
