"""The sequential layer-wise calibration loop, which every causal-LM method runs through.

For each pass: every stage's handler plans on a statistics-only sweep (:mod:`netslim.engine.sweep`)
and may prepare the model (``start``); then, for each block in order, the engine gathers the
input statistics the stages need through its own forward hooks, lets each stage act (on every
projection for ``Scope.LAYER``, on the whole block for ``Scope.BLOCK``), recomputes the block's
outputs with the compressed weights and feeds them to the next block; finally each handler's
``finish`` runs. Peak memory is the model plus one block's activations for the calibration
windows.

Stages of layer scope run together in one pass; a block-scope stage (which changes the block
structure: heads, neurons, the residual basis, the number of blocks) runs in a pass of its own.
The engine reads each stage's ``scope``, ``needs`` and ``handler`` from its config class; it
never looks a method up by name.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from netslim.data.windows import TokenWindows
from netslim.engine.capture import capture_block_inputs
from netslim.engine.distributed import shard, world_size
from netslim.engine.checkpoint import Checkpoint, job_fingerprint
from netslim.engine.records import LayerRecord, RunLog
from netslim.engine.residency import IN_MEMORY, Residency
from netslim.engine.stats import InputStats, Stat
from netslim.engine.step import BlockStep
from netslim.engine.sweep import iter_block_stats
from netslim.errors import ConfigError
from netslim.methods.base import Handler, MethodConfig, Scope, layer_view
from netslim.models.adapter import ModelAdapter, linear_weight


# The record of a layer no calibration token reached, compressed with white statistics.
UNREACHED = "no calibration token reached this layer: compressed from its weights alone (white input statistics)"


@dataclass
class RunRecord:
    """What a run decided: the resolved stages (replayable) and one record per module."""

    stages: list[MethodConfig]
    layers: list[LayerRecord]


def run_stages(
    adapter: ModelAdapter,
    stages: Sequence[MethodConfig],
    calibration: TokenWindows | None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    timing: dict[str, float] | None = None,
    batch_size: int = 1,
    residency: Residency = IN_MEMORY,
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
        batch_size: Calibration windows per block forward (the statistics are the same up to
            float rounding; a larger batch uses more activation memory).
        residency: Where block weights are between uses (:mod:`netslim.engine.residency`);
            one that streams them from disk takes one pass of layer-scope stages, without
            checkpoints (the blocks it writes out are the run's output).

    Raises:
        ConfigError: if a stage needs calibration data and none was given, a compensation
            stage (eora) has no earlier stage in its pass to compensate, or a checkpoint
            folder is given under several processes (every rank would write it).
    """
    check_llm_stages(stages)
    for cfg in stages:
        if cfg.scope is Scope.MODEL:
            raise ConfigError(f"method '{cfg.method}' acts on the whole model, not in a calibration pass; "
                              "run it through netslim.compress, which calls it between the engine's passes")
    passes = _passes(stages)
    _check_compensation(passes)
    if residency.streams:
        _check_streamable(passes, checkpoint_dir)
    if checkpoint_dir is not None and world_size() > 1:
        raise ConfigError("checkpoint_dir under several processes would have every rank write the same folder; "
                          "leave it out of a distributed run")
    log = RunLog()
    checkpoint = _checkpoint(adapter, stages, calibration, checkpoint_dir)
    model = adapter.model
    was_training = model.training
    model.eval()
    resolved: list[MethodConfig] = []
    try:
        with torch.no_grad():
            for group in passes:
                resolved.extend(_run_pass(adapter, group, calibration, log, progress, checkpoint, batch_size, residency))
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


def _passes(stages: Sequence[MethodConfig]) -> list[list[MethodConfig]]:
    """Split stages into runs of layer-scope stages and single block-scope stages."""
    passes: list[list[MethodConfig]] = []
    for cfg in stages:
        if cfg.scope is Scope.LAYER and passes and passes[-1][0].scope is Scope.LAYER:
            passes[-1].append(cfg)
        else:
            passes.append([cfg])
    return passes


def check_streamable(stages: Sequence[MethodConfig]) -> None:
    """Refuse, before any work, a recipe that a residency streaming blocks from disk cannot run.

    Raises:
        ConfigError: naming the stage to drop.
    """
    if any(cfg.scope is Scope.MODEL for cfg in stages):
        raise ConfigError("--offload holds one block at a time, and recover fine-tunes the whole model: compress "
                          "with --offload, then recover the output without it")
    _check_streamable(_passes(stages), None)


def _check_streamable(passes: list[list[MethodConfig]], checkpoint_dir) -> None:
    """Refuse what a residency that streams blocks from disk cannot run: a second pass (it would
    read the original weights again), block-scope stages, whole-model gradients, checkpoints.

    Raises:
        ConfigError: naming the stage to drop or what to leave out.
    """
    for cfg in (c for group in passes for c in group):
        if cfg.scope is not Scope.LAYER or Stat.GRADIENT in cfg.needs:
            raise ConfigError(f"--offload runs layer-wise methods (gptq, rtn, sparsegpt, wanda, magnitude, svd_llm, "
                              f"eora); '{cfg.method}' needs the whole model in memory: leave out --offload")
    if len(passes) > 1:
        raise ConfigError("--offload runs one calibration pass; split the recipe into jobs, one per pass")
    if checkpoint_dir is not None:
        raise ConfigError("an offloaded run keeps no per-block checkpoints; pass checkpoint_dir=None")


def _check_compensation(passes: list[list[MethodConfig]]) -> None:
    """Reject a stage that compensates earlier stages (``needs_original``) but opens its pass.

    Such a stage sees the weights as they were at the start of its pass, so with no stage
    before it in the pass (first in the recipe, or right after a block-scope stage such as
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


def _run_pass(
    adapter: ModelAdapter,
    stages: list[MethodConfig],
    calibration: TokenWindows | None,
    log: RunLog,
    progress: bool,
    checkpoint: Checkpoint | None,
    batch_size: int,
    residency: Residency,
) -> list[MethodConfig]:
    """Plan, start, act on every block, finish; returns the resolved stages."""
    needs_data = [cfg.method for cfg in stages if cfg.needs]
    if needs_data and calibration is None:
        raise ConfigError(f"method {needs_data[0]} needs calibration data; pass calibration windows")
    handlers: list[Handler] = [cfg.handler() for cfg in stages]
    sweep = None if calibration is None else partial(iter_block_stats, adapter, calibration, batch_size=batch_size,
                                                     residency=residency)
    stages = [h.plan(cfg, adapter, sweep) for h, cfg in zip(handlers, stages)]
    ids = None if calibration is None else shard(calibration.ids)  # this process's windows
    hidden, calls = capture_block_inputs(adapter, ids, batch_size=batch_size, residency=residency) if needs_data else (None, [None] * adapter.num_blocks)
    residency.load(0)
    first = BlockStep(adapter, 0, hidden, calls[0], log, batch_size)
    changed = [h.start(cfg, first) for h, cfg in zip(handlers, stages)]  # every start hook runs
    if any(changed) and needs_data:
        hidden, _ = capture_block_inputs(adapter, ids, record_calls=False, batch_size=batch_size,
                                         residency=residency)
    start = 0
    if checkpoint is not None:
        start, hidden, records, _ = checkpoint.restore(adapter, hidden)
        if start:
            log.restore(records)
    snapshot = any(cfg.needs_original for cfg in stages)
    blocks = range(start, adapter.num_blocks)
    names = "+".join(cfg.method for cfg in stages)
    for index in tqdm(blocks, desc=names, unit="block", initial=start, total=adapter.num_blocks, disable=not progress):
        residency.load(index)
        residency.before(index)
        step = BlockStep(adapter, index, hidden, calls[index], log, batch_size)
        originals = _snapshot(adapter, index) if snapshot else {}
        for handler, cfg in zip(handlers, stages):
            if cfg.scope is Scope.LAYER:
                _act_on_layers(step, handler, cfg, originals if cfg.needs_original else {})
            else:
                handler.act_block(cfg, step)
        if needs_data and index + 1 < adapter.num_blocks:
            hidden = step.output()
        _release_caches(adapter.blocks[index])
        residency.after(index)
        if checkpoint is not None:
            checkpoint.save_block(adapter, index, hidden, [r.as_dict() for r in log.as_list()])
        residency.unload(index)
    for handler, cfg in zip(handlers, stages):
        handler.finish(cfg, adapter, log)
    return stages


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


def _act_on_layers(step: BlockStep, handler: Handler, cfg: MethodConfig, originals: dict[str, torch.Tensor]) -> None:
    """Call ``handler.act_layer`` on every projection of the block ``cfg`` does not ignore,
    each group of projections with the input statistics gathered just before it (stage by
    stage under ``true_sequential``, all at once otherwise).

    A projection that no calibration token reached (a routed expert the router never picked)
    is compressed with white statistics (:meth:`InputStats.white`: the method's weights-only
    form) and its record says so (``calibration_fallback``); every record of a method that
    reads statistics gives the tokens its layer saw (``calibration_tokens``).
    """
    kept = ([[n for n in group if not cfg.ignores(n)] for group in stage] for stage in step.adapter.block_stages(step.index))
    stages = [stage for stage in ([g for g in groups if g] for groups in kept) if stage]
    subsets = stages if cfg.true_sequential else [[g for stage in stages for g in stage]]
    for subset in subsets:
        stats, _ = step.layer_stats(subset, cfg.needs, output=False)
        for group in subset:
            for name in group:
                layer = layer_view(step.adapter, step.index, name, originals.get(name))
                seen, notes = stats.get(name), {}
                if seen is not None:
                    notes["calibration_tokens"] = seen.n_tokens
                    if seen.n_tokens == 0:
                        width = getattr(layer.module, "in_features", None) or linear_weight(layer.module).shape[1]
                        seen = InputStats.white(width, cfg.needs, step.hidden.device).view()
                        notes["calibration_fallback"] = UNREACHED
                values = handler.act_layer(layer, seen, cfg)
                step.record(name, layer.module, cfg.method, {**notes, **(values or {})})
        del stats
