"""Capturing the inputs of the decoder blocks, and running one block on them.

The hidden states entering block 0 are recorded for every calibration window by a forward
pre-hook that stops the model with a private exception. The other arguments each block
receives (rotary embeddings, masks, position ids) do not depend on the weights and are the
same for every window of one length, so they are recorded once per block from one forward of
the first window in which every block passes its input through unchanged: no block computes,
so blocks whose weights are not loaded (``--offload``) do not need to be.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netslim.engine.residency import IN_MEMORY, Residency
from netslim.models.adapter import ModelAdapter


class StopForward(Exception):
    """Raised by a hook to end a forward early once it has what it needs; caught by
    :func:`capture_block_inputs` and :func:`run_block_until_stopped`, never by callers."""


@dataclass
class BlockCall:
    """Everything a block is called with, except its hidden-state input."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, BlockCall]:
    if args:
        return args[0], BlockCall(tuple(args[1:]), dict(kwargs))
    rest = dict(kwargs)
    return rest.pop("hidden_states"), BlockCall((), rest)


@torch.no_grad()
def capture_block_inputs(
    adapter: ModelAdapter, ids: torch.Tensor, record_calls: bool = True, batch_size: int = 1,
    residency: Residency = IN_MEMORY,
) -> tuple[torch.Tensor, list[BlockCall]]:
    """Hidden states entering block 0 for each window, and each block's other call arguments.

    Args:
        adapter: The model's adapter.
        ids: Token windows, shape (windows, seqlen).
        record_calls: Run the first window through every block to record their arguments;
            ``False`` stops every window at block 0 (the calls come back as ``None``), e.g.
            when only the input of block 0 has changed and the blocks do not fit it yet.
        batch_size: Windows per forward. The first window always runs alone, so the recorded
            arguments have batch 1 and broadcast over any batch :func:`run_block` uses.
        residency: Asked to load the embeddings for the capture and free them after.

    Returns:
        ``(hidden, calls)``: hidden of shape (windows, seqlen, hidden_size) on the model's
        device, and one :class:`BlockCall` per block.
    """
    model = adapter.model
    hidden: list[torch.Tensor] = []
    calls: list[BlockCall | None] = [None] * adapter.num_blocks
    stop_after_first = [False]

    def make_hook(index: int):
        def hook(_module: nn.Module, args: tuple, kwargs: dict):
            state, call = _split_hidden(args, kwargs)
            if index == 0:
                hidden.append(state.detach())
            if calls[index] is None:
                calls[index] = call
            if stop_after_first[0]:
                raise StopForward

        return hook

    def passthrough(index: int):
        def forward(*args, **kwargs):
            if index == adapter.num_blocks - 1:
                raise StopForward  # the final norm and head are not needed
            return _split_hidden(args, kwargs)[0]

        return forward

    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(adapter.blocks)]
    starts = [0, *range(1, ids.shape[0], batch_size)]
    try:
        ids = residency.load_embeddings(ids)
        device = adapter.device  # where the embeddings now are
        for first, end in zip(starts, [*starts[1:], ids.shape[0]]):
            stop_after_first[0] = first > 0 or not record_calls
            if first == 0 and record_calls:
                for index, block in enumerate(adapter.blocks):
                    block.forward = passthrough(index)
            try:
                model(ids[first:end].to(device), use_cache=False)
            except StopForward:
                pass
            finally:
                for block in adapter.blocks:
                    block.__dict__.pop("forward", None)
    finally:
        for handle in handles:
            handle.remove()
        residency.unload_outside()
    return torch.cat(hidden, dim=0), calls  # type: ignore[return-value]


def run_block_until_stopped(block: nn.Module, hidden: torch.Tensor, call: BlockCall, batch_size: int = 1) -> None:
    """Run ``block`` over ``hidden`` in micro-batches for the hooks it fires, each forward ended
    early where a hook raises :class:`StopForward` (its output is not needed)."""
    for start in range(0, hidden.shape[0], batch_size):
        try:
            block(hidden[start : start + batch_size], *call.args, **call.kwargs)
        except StopForward:
            pass


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall, batch_size: int = 1) -> torch.Tensor:
    """Run ``block`` over ``hidden`` (windows, seqlen, width) in micro-batches; same shape out."""
    outs = []
    for start in range(0, hidden.shape[0], batch_size):
        out = block(hidden[start : start + batch_size], *call.args, **call.kwargs)
        outs.append(out[0] if isinstance(out, tuple) else out)
    return torch.cat(outs, dim=0)
