"""The sequential layer-wise calibration loop.

For each block in order: gather the input statistics the stages need through forward hooks,
let each stage act on the block's projections, then recompute the block's outputs with the
compressed weights and feed them to the next block. Peak memory is the model plus one
block's activations for the calibration windows.

Stages of layer scope run together in one pass over the blocks; a model-scope stage (which
needs the whole model, e.g. removing blocks) ends the pass and runs on its own. The engine
reads each stage's ``scope``, ``needs`` and ``handler`` from its config class; it never looks
a method up by name. Planning sweeps (:meth:`MethodConfig.plan`) are handed
:func:`iter_block_stats` bound to the model and calibration data.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from netslim.data.windows import TokenWindows
from netslim.engine.capture import BlockCall, capture_block_inputs, run_block
from netslim.engine.checkpoint import Checkpoint, job_fingerprint
from netslim.engine.stats import InputStats, LayerStats, Stat
from netslim.errors import ConfigError
from netslim.methods.base import MethodConfig, Scope, layer_view
from netslim.models.adapter import ModelAdapter, linear_weight


@dataclass
class RunRecord:
    """What a run decided: the resolved stages (replayable) and one record per layer."""

    stages: list[MethodConfig]
    layers: list[dict]


class LayerLog:
    """Per-layer records of what the stages did, in block order."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}

    def add(self, name: str, module: nn.Module, method: str, extra: dict | None) -> None:
        """Record that ``method`` acted on ``name``; sparsity is measured from the weight now."""
        record = self.records.setdefault(name, {"name": name, "methods": []})
        weight = linear_weight(module) if hasattr(module, "weight") else None
        if weight is not None:
            record["shape"] = list(weight.shape)
            record["sparsity"] = float((weight == 0).sum()) / weight.numel()
        record["methods"].append(method)
        record.update(extra or {})

    def as_list(self) -> list[dict]:
        """Records in the order layers were first touched."""
        return list(self.records.values())


def run_stages(
    adapter: ModelAdapter,
    stages: Sequence[MethodConfig],
    calibration: TokenWindows | None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    timing: dict[str, float] | None = None,
) -> RunRecord:
    """Apply ``stages`` to the adapter's model in place; return what was decided.

    The returned record holds every stage *resolved*: with the model-wide choices of its
    planning spelled out (OWL's per-block sparsities, sensitivity ranks, width's per-block
    removal counts, the blocks depth removes), so replaying ``record.stages`` on the
    original model reproduces the same weights; and the per-layer records.

    Args:
        checkpoint_dir: Where to write per-block checkpoints; rerunning the same job (same
            model, recipe and calibration data) with the same folder resumes after the last
            finished block. Only recipes that run as a single pass of layer-scope stages are
            checkpointed; others run without.
        timing: If given, receives ``"restored_seconds"``: the compression seconds that
            earlier interrupted runs spent on the blocks restored from the checkpoint (0.0 if
            none), to add to this run's wall time for the job's total.

    Raises:
        ConfigError: if a stage needs calibration data and none was given, or a compensation
            stage (eora) has no earlier stage in its pass to compensate.
    """
    check_llm_stages(stages)
    passes = _passes(stages)
    _check_compensation(passes)
    log = LayerLog()
    checkpoint = _checkpoint(adapter, stages, calibration, checkpoint_dir)
    model = adapter.model
    was_training = model.training
    model.eval()
    resolved: list[MethodConfig] = []
    try:
        with torch.no_grad():
            for group in passes:
                if group[0].scope is Scope.MODEL:
                    done = group[0].handler(adapter, calibration, group[0], log)
                    resolved.append(done or group[0])
                else:
                    sweep = None if calibration is None else partial(iter_block_stats, adapter, calibration)
                    group = [cfg.plan(adapter, sweep) for cfg in group]
                    _sequential_pass(adapter, group, calibration, log, progress, checkpoint)
                    resolved.extend(group)
    finally:
        model.train(was_training)
    if timing is not None:
        timing["restored_seconds"] = checkpoint.restored_seconds if checkpoint is not None else 0.0
    return RunRecord(resolved, log.as_list())


def check_llm_stages(stages: Sequence[MethodConfig]) -> None:
    """Refuse stages made for vision and encoder models (``Scope.GRAPH``) in a causal-LM recipe."""
    for cfg in stages:
        if cfg.scope is Scope.GRAPH:
            raise ConfigError(f"method '{cfg.method}' prunes vision and encoder models (e.g. netslim compress "
                              "efficientnet-lite0 --method channels); for a causal LM use width or slicegpt")


def iter_block_stats(
    adapter: ModelAdapter, calibration: TokenWindows, needs: frozenset[Stat]
) -> Iterator[tuple[int, dict[str, LayerStats]]]:
    """Each block's index and the input statistics of its projections, without changing it.

    For planning sweeps (:meth:`MethodConfig.plan`): the blocks see the calibration data as
    the current model propagates it. Statistics of one block are freed when the next is read.
    """
    hidden, calls = capture_block_inputs(adapter, calibration.ids)
    for index in range(adapter.num_blocks):
        yield index, _collect(adapter, index, adapter.block_input_groups(index), needs, hidden, calls[index])
        if index + 1 < adapter.num_blocks:
            hidden = run_block(adapter.blocks[index], hidden, calls[index])


def _passes(stages: Sequence[MethodConfig]) -> list[list[MethodConfig]]:
    """Split stages into runs of layer/block scope stages and single model-scope stages."""
    passes: list[list[MethodConfig]] = []
    for cfg in stages:
        if cfg.scope is Scope.MODEL:
            passes.append([cfg])
        elif passes and passes[-1][0].scope is not Scope.MODEL:
            passes[-1].append(cfg)
        else:
            passes.append([cfg])
    return passes


def _check_compensation(passes: list[list[MethodConfig]]) -> None:
    """Reject a stage that compensates earlier stages (``needs_original``) but opens its pass.

    Such a stage sees the weights as they were at the start of its pass, so with no stage
    before it in the pass (first in the recipe, or right after a model-scope stage such as
    ``width``, ``depth`` or ``slicegpt``) it would only add a zero correction.

    Raises:
        ConfigError: naming the stage and what must precede it.
    """
    for group in passes:
        if group[0].needs_original:
            raise ConfigError(
                f"method {group[0].method} compensates the stages before it in the same pass; put it after a "
                "layer-scope stage such as gptq, rtn, wanda or svd_llm (not first, nor right after width, depth or slicegpt)"
            )


def _checkpoint(adapter, stages, calibration, folder) -> Checkpoint | None:
    """A checkpoint for this job, if a folder is given and the recipe is one layer-scope pass."""
    if folder is None or any(cfg.scope is not Scope.LAYER for cfg in stages):
        return None
    started = time.perf_counter()
    recipe = [cfg.model_dump(mode="json") for cfg in stages]
    fingerprint = job_fingerprint(adapter, recipe, calibration.ids if calibration is not None else None)
    return Checkpoint(Path(folder) / fingerprint[:16], fingerprint, started)


def _sequential_pass(
    adapter: ModelAdapter,
    stages: list[MethodConfig],
    calibration: TokenWindows | None,
    log: LayerLog,
    progress: bool,
    checkpoint: Checkpoint | None = None,
) -> None:
    needs_data = [cfg.method for cfg in stages if cfg.needs]
    if needs_data and calibration is None:
        raise ConfigError(f"method {needs_data[0]} needs calibration data; pass calibration windows")
    hidden, calls = capture_block_inputs(adapter, calibration.ids) if needs_data else (None, [])
    start = 0
    if checkpoint is not None:
        start, hidden, records, _ = checkpoint.restore(adapter, hidden)
        if start:
            log.records = {r["name"]: r for r in records}
    names = "+".join(cfg.method for cfg in stages)
    snapshot = any(cfg.needs_original for cfg in stages)
    blocks = range(start, adapter.num_blocks)
    for index in tqdm(blocks, desc=names, unit="block", initial=start, total=adapter.num_blocks, disable=not progress):
        call = calls[index] if needs_data else None
        originals = _snapshot(adapter, index) if snapshot else {}
        for cfg in stages:
            _apply_stage(adapter, index, cfg, hidden, call, log, originals if cfg.needs_original else {})
        if needs_data and index + 1 < adapter.num_blocks:
            hidden = run_block(adapter.blocks[index], hidden, call)
        _release_caches(adapter.blocks[index])
        if checkpoint is not None:
            checkpoint.save_block(adapter, index, hidden, log.as_list())


def _release_caches(block: nn.Module) -> None:
    """Let compressed modules of a finished block drop what they rebuild on demand (the float
    weight a quantized Linear caches), so a pass holds at most one block's working copies."""
    for module in block.modules():
        release = getattr(module, "release_cache", None)
        if callable(release):
            release()


def _snapshot(adapter: ModelAdapter, index: int) -> dict[str, torch.Tensor]:
    """Copies of block ``index``'s (out, in) weights before any stage of the pass acts on it."""
    return {name: linear_weight(m).detach().clone() for name, m in adapter.block_linears(index).items()}


def _apply_stage(
    adapter: ModelAdapter,
    index: int,
    cfg: MethodConfig,
    hidden: torch.Tensor | None,
    call: BlockCall | None,
    log: LayerLog,
    originals: dict[str, torch.Tensor],
) -> None:
    groups = [[n for n in group if not cfg.ignores(n)] for group in adapter.block_input_groups(index)]
    groups = [g for g in groups if g]
    subsets = [[g] for g in groups] if cfg.true_sequential else [groups]
    for subset in subsets:
        stats = _collect(adapter, index, subset, cfg.needs, hidden, call)
        for group in subset:
            for name in group:
                layer = layer_view(adapter, index, name, originals.get(name))
                extra = cfg.handler(layer, stats.get(name), cfg)
                log.add(name, layer.module, cfg.method, extra)
        del stats


def _collect(
    adapter: ModelAdapter,
    index: int,
    groups: list[list[str]],
    needs: frozenset[Stat],
    hidden: torch.Tensor | None,
    call: BlockCall | None,
) -> dict[str, LayerStats]:
    """Run block ``index`` over the calibration states with hooks; stats per layer name."""
    if not needs or hidden is None:
        return {}
    block = adapter.blocks[index]
    accumulators: dict[str, InputStats] = {}
    handles = []
    for group in groups:
        first = adapter.model.get_submodule(group[0])
        width = getattr(first, "in_features", None) or linear_weight(first).shape[1]  # compressed modules keep in_features
        acc = InputStats(width, needs, hidden.device)
        handles.append(first.register_forward_hook(lambda _m, inp, _o, acc=acc: acc.add(inp[0])))
        for name in group:
            accumulators[name] = acc
    try:
        run_block(block, hidden, call)
    finally:
        for handle in handles:
            handle.remove()
    return {name: acc.view() for name, acc in accumulators.items()}
