"""The statistics-only sweep: every block's statistics on the model as it is, changing nothing.

Planning hooks (:meth:`netslim.methods.base.Handler.plan`) get :func:`iter_block_stats` bound to
the model and its calibration windows. Besides the per-layer input statistics of the
sequential pass, a sweep gathers what only a whole-model view gives: the gradients of every
block projection (``Stat.GRADIENT``, one backward per window), the cosine similarity of each
block's input and output (``Stat.BLOCK_COSINE``) and the calibration loss with each block
skipped (``Stat.SKIP_LOSS``, costs the blocks after it once more per block).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

from netslim.data.windows import TokenWindows
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.distributed import shard, world_size
from netslim.engine.records import RunLog
from netslim.engine.residency import IN_MEMORY, Residency
from netslim.errors import ConfigError
from netslim.engine.stats import LAYER_STATS, BlockStats, LayerStats, Stat
from netslim.engine.step import BlockStep
from netslim.models.adapter import ModelAdapter


def check_distributable(needs: frozenset[Stat]) -> None:
    """Refuse, in one line, statistics that are not sums over the windows' tokens.

    Raises:
        ConfigError: under a process group of more than one rank, for gradients, skip losses
            and block cosines (sweeps of the whole model).
    """
    whole = sorted(stat.value for stat in needs & {Stat.GRADIENT, Stat.SKIP_LOSS, Stat.BLOCK_COSINE})
    if world_size() > 1 and whole:
        raise ConfigError(f"{', '.join(whole)} cannot be split over processes yet; run this recipe in one process")


@torch.no_grad()
def iter_block_stats(
    adapter: ModelAdapter,
    calibration: TokenWindows,
    needs: frozenset[Stat],
    windows: int | None = None,
    gradient_windows: int | None = None,
    layers: Callable[[str], bool] | None = None,
    batch_size: int = 1,
    residency: Residency = IN_MEMORY,
) -> Iterator[tuple[int, BlockStats]]:
    """Each block's index and its :class:`BlockStats`, without changing the model.

    The blocks see the calibration data as the current model propagates it; one block's
    statistics are freed when the next is read.

    Args:
        needs: The statistics to gather.
        windows: Use only the first ``windows`` calibration windows (default: all).
        gradient_windows: Windows whose loss is differentiated for ``Stat.GRADIENT``
            (default: those of the sweep).
        layers: Gather input statistics only for the projections it accepts (by full name),
            e.g. FLAP's output projections (default: every projection). Gradients cover every
            projection.
        batch_size: Windows per block forward.
        residency: Loads each block before its statistics and unloads it once the caller
            has read them (it may read the block's weights meanwhile).
    """
    if residency.streams and needs & {Stat.GRADIENT, Stat.SKIP_LOSS}:
        raise ConfigError("--offload holds one block at a time; gradients and skip losses need the whole model: "
                          "leave out --offload")
    check_distributable(needs)
    ids = shard(calibration.ids if windows is None else calibration.ids[:windows])
    grads = gradients(adapter, ids[:gradient_windows]) if Stat.GRADIENT in needs else None
    layer_needs = needs & LAYER_STATS
    forward = bool(layer_needs or needs & {Stat.BLOCK_COSINE, Stat.SKIP_LOSS})  # gradients alone need no block pass
    hidden, calls = capture_block_inputs(adapter, ids, batch_size=batch_size, residency=residency) if forward else (None, [None] * adapter.num_blocks)
    for index in range(adapter.num_blocks):
        residency.load(index)
        step = BlockStep(adapter, index, hidden, calls[index], RunLog(), batch_size)
        groups = [g for g in adapter.block_input_groups(index) if layers is None or any(map(layers, g))]
        found, output = step.layer_stats(groups, layer_needs, grads)
        if grads is not None:  # a projection without input statistics still gets its gradient
            for name in adapter.block_linears(index):
                found.setdefault(name, LayerStats(None, grads[name]))
        if forward and output is None:
            output = step.output()
        stats = BlockStats(found)
        if Stat.BLOCK_COSINE in needs:
            stats.cosine = float(F.cosine_similarity(hidden.float().flatten(0, 1), output.float().flatten(0, 1), dim=-1).mean())
        if Stat.SKIP_LOSS in needs:
            stats.skip_loss = tail_loss(adapter, hidden, calls, index + 1, ids, batch_size)  # block skipped
        yield index, stats
        residency.unload(index)
        hidden = output


def gradients(adapter: ModelAdapter, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """``sum dL/dW`` of every block projection over the windows ``ids`` (one backward each)."""
    linears = {n: m for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}
    flags = {n: p.requires_grad for n, p in adapter.model.named_parameters()}
    adapter.model.requires_grad_(False)
    for module in linears.values():
        module.weight.requires_grad_(True)
    try:
        with torch.enable_grad():
            for row in ids:
                window = row.unsqueeze(0).to(adapter.device)
                adapter.model(window, labels=window, use_cache=False).loss.backward()
        return {n: m.weight.grad.detach().clone() for n, m in linears.items()}
    finally:
        for name, param in adapter.model.named_parameters():
            param.grad = None
            param.requires_grad_(flags.get(name, True))


def tail_loss(adapter: ModelAdapter, hidden: torch.Tensor, calls: list, start: int, ids: torch.Tensor,
              batch_size: int = 1) -> float:
    """Mean next-token NLL of ``ids`` with ``hidden`` entering block ``start`` and the blocks from
    there on as the model holds them (``start == num_blocks``: only the final norm and head).
    The head runs one window at a time: a window's logits over the vocabulary, not all of them."""
    for index in range(start, adapter.num_blocks):
        hidden = run_block(adapter.blocks[index], hidden, calls[index], batch_size)
    total = 0.0
    for states, window in zip(hidden, ids):
        logits = adapter.lm_head(adapter.final_norm(states[:-1])).float()
        total += float(F.cross_entropy(logits, window[1:].to(logits.device), reduction="sum"))
    return total / (ids.shape[0] * (ids.shape[1] - 1))
