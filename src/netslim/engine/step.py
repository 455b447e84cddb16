"""One block of the engine's loop, as a method's hooks see it: the block, the calibration
states entering it, and statistics of any signal inside it.

The engine owns every forward hook: :meth:`BlockStep.signals` runs the block over the
calibration states once with hooks at the points a method names and returns their statistics;
:meth:`BlockStep.layer_stats` does the same for groups of projections that read one input.
Methods never register hooks or run blocks themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from netslim.engine.capture import BlockCall, StopForward, run_block, run_block_until_stopped
from netslim.engine.records import RunLog
from netslim.engine.stats import InputStats, LayerStats, Stat
from netslim.models.adapter import ModelAdapter, linear_weight

INPUT, OUTPUT = "input", "output"  # the block's own input and output, for BlockStep.signals


@dataclass
class BlockStep:
    """Block ``index`` of the current pass.

    Attributes:
        adapter: The model's adapter.
        index: The block's index.
        hidden: Calibration states entering the block, (windows, seqlen, width); ``None`` in a
            data-free pass.
        call: The block's other call arguments (rotary embeddings, masks).
        log: The run's records; :meth:`record` adds to it.
        batch_size: Windows per forward of the block.
    """

    adapter: ModelAdapter
    index: int
    hidden: torch.Tensor | None
    call: BlockCall | None
    log: RunLog
    batch_size: int = 1

    @property
    def block(self) -> nn.Module:
        """The block as the model holds it now (a method may have replaced it)."""
        return self.adapter.blocks[self.index]

    @property
    def name(self) -> str:
        """The block's full module name."""
        return self.adapter.block_name(self.index)

    def record(self, name: str, module: nn.Module, method: str, values: dict | None = None) -> None:
        """Add a method's decisions for module ``name`` to the run's records."""
        self.log.add(name, module, method, values)

    def signals(self, points: Mapping[str, frozenset[Stat]]) -> dict[str, LayerStats]:
        """Statistics of signals of the block over the calibration states.

        Args:
            points: ``"input"`` (what enters the block: read from the states, no forward),
                ``"output"`` (what leaves it) or the path of a child module inside the block
                (its input), each with the statistics to gather. The block runs once, with
                hooks, if any point lies inside it or after it.
        """
        block = self.block
        accumulators: dict[str, _Lazy] = {}
        handles = []
        for point, needs in points.items():
            acc = accumulators[point] = _Lazy(needs, self.hidden.device)
            if point == INPUT:
                acc.add_input(block, (self.hidden,))
            elif point == OUTPUT:
                handles.append(block.register_forward_hook(acc.add_output))
            else:
                handles.append(block.get_submodule(point).register_forward_pre_hook(acc.add_input))
        try:
            if handles:
                run_block(block, self.hidden, self.call, self.batch_size)
        finally:
            for handle in handles:
                handle.remove()
        return {point: acc.view() for point, acc in accumulators.items()}

    def layer_stats(self, groups: list[list[str]], needs: frozenset[Stat],
                    grads: Mapping[str, torch.Tensor] | None = None, output: bool = True,
                    ) -> tuple[dict[str, LayerStats], torch.Tensor | None]:
        """Input statistics of the projections in ``groups`` (full names; one group reads one
        input, so it shares one accumulator) from one forward of the block, and that forward's
        output. ``({}, None)`` when nothing is needed or the pass is data-free.

        With ``output=False`` each forward stops as soon as every group has seen its input
        (a true-sequential pass of q/k/v then runs only the input norm): the same statistics,
        less compute, and ``None`` for the output.
        """
        if not needs or self.hidden is None:
            return {}, None
        accumulators: dict[str, InputStats] = {}
        handles = []
        seen: set[int] = set()

        def hook(_module, args, acc: InputStats, index: int) -> None:
            acc.add(args[0])
            seen.add(index)
            if not output and len(seen) == len(groups):
                seen.clear()
                raise StopForward

        # A group may see no input in a forward (an expert no token of the batch is routed to):
        # each forward starts counting anew, so a stopped forward has seen every group.
        handles.append(self.block.register_forward_pre_hook(lambda *_: seen.clear()))
        for index, group in enumerate(groups):
            first = self.adapter.model.get_submodule(group[0])
            width = getattr(first, "in_features", None) or linear_weight(first).shape[1]  # compressed modules keep in_features
            acc = InputStats(width, needs, self.hidden.device)
            handles.append(first.register_forward_pre_hook(
                lambda m, args, acc=acc, index=index: hook(m, args, acc, index)))
            for name in group:
                accumulators[name] = acc
        try:
            if output:
                result = run_block(self.block, self.hidden, self.call, self.batch_size)
            else:
                run_block_until_stopped(self.block, self.hidden, self.call, self.batch_size)
                result = None
        finally:
            for handle in handles:
                handle.remove()
        grads = grads or {}
        for acc in dict.fromkeys(accumulators.values()):  # each shared accumulator once, in group order
            acc.all_reduce()
        return {name: acc.view(grads.get(name)) for name, acc in accumulators.items()}, result

    def output(self) -> torch.Tensor:
        """The block's output for the calibration states, with its current weights."""
        return run_block(self.block, self.hidden, self.call, self.batch_size)


class _Lazy:
    """An :class:`InputStats` whose width is read from the first activation it sees."""

    def __init__(self, needs: frozenset[Stat], device: torch.device):
        self.needs, self.device, self.acc = needs, device, None

    def _add(self, x: torch.Tensor) -> None:
        if self.acc is None:
            self.acc = InputStats(x.shape[-1], self.needs, self.device)
        self.acc.add(x)

    def add_input(self, _module, args) -> None:
        self._add(args[0])

    def add_output(self, _module, _args, out) -> None:
        self._add(out[0] if isinstance(out, tuple) else out)

    def view(self) -> LayerStats:
        if self.acc is not None:
            self.acc.all_reduce()
        return LayerStats(self.acc)
