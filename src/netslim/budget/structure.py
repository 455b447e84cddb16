"""The structural space of a speed budget: what each decoder block keeps, what that costs in
time on this machine, and an estimate of what it costs in loss.

Every block either stays with some of its attention units (key-value groups with their query
heads) and MLP neurons removed (width pruning with FLAP's scores, the lowest-scored structures
first, the output projections' kept columns refitted by least squares), or goes whole
(depth). In PyTorch on a CPU only such structural removals make a prefill faster: quantized
and sparse layers run as dense ones.

- **Latency** (:func:`latency_table`): every block shape of the space is cut from a copy of
  block 0 and timed on one window, the shapes' runs interleaved (a machine shared with other
  jobs slows every shape alike); what is not a block (embeddings, final norm, head, cache) is
  the dense model's prefill minus its blocks. A choice's predicted latency is the sum.
- **Loss** (:func:`measure_probes`): FLAP's score of a structure, ``Var(x_j) ||W_:,j||^2``, is
  the mean squared change of the block's output when the structure is replaced by its mean, so
  a cut's *energy* is the sum of the scores it removes. Per block, the rise in next-token loss
  on held-out windows with one probe cut (one attention unit and half the MLP) turns energy
  into nats (shrunk halfway toward the model-wide ratio, as the quantization proxies are), and
  the rise with the block skipped is the cost of removing it.
- **Refit from one sweep**: the sweep that scores the blocks also keeps, per block, ``E[x x^T]``
  and ``E[x]`` of the attention and MLP output projections' inputs. Cutting heads or neurons
  leaves the other heads' and neurons' activations as they were (for the same block input), so
  the least-squares refit of any cut of a block is solved from these dense statistics, with no
  forward: every probe and every candidate is cut and refitted this way (:meth:`Structure.cut`).
  The final model replays the recipe, whose width stage refits each kept block on the states
  that reach it in the cut model.

A choice (block name -> option label) replays as one recipe (:func:`recipe`): ``depth`` with
the removed blocks, ``width`` with per-block counts, and the stored grid :data:`STORE` on top.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from netslim.engine.capture import BlockCall, capture_block_inputs, run_block
from netslim.engine.stats import LayerStats
from netslim.engine.sweep import tail_loss
from netslim.errors import ConfigError
from netslim.eval.latency import num_threads, prefill_once
from netslim.methods.base import Sweep
from netslim.methods.width import REFIT_NEEDS, BlockScores, WidthConfig, cut_block, score_blocks
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter

VERSION = 3  # of how the structural proxies and points are measured (part of the cache key)
DROP = "drop"  # the option that removes the whole block
LEVELS = 8  # MLP widths step by an eighth of the dense width ...
MIN_KEPT = 0.25  # ... down to a quarter of it
NEURON_MULTIPLE = 64  # kept MLP widths of 512 neurons or more stay multiples of this
FLAP = WidthConfig(score="flap")  # the scores of every cut
STORE = {"method": "rtn", "bits": 8, "group_size": -1}  # stored on top: 8-bit codes, run as float by torch
SHRINK, FLOOR = 0.5, 0.25  # a block's sensitivity: this share its own, at least this share of the model's


@dataclass(frozen=True)
class Cut:
    """A block shape: its ``units`` lowest attention units and ``neurons`` lowest MLP neurons removed."""

    units: int
    neurons: int

    @property
    def label(self) -> str:
        return f"u{self.units} n{self.neurons}"

    @classmethod
    def parse(cls, label: str) -> Cut:
        units, neurons = label.split()
        return cls(int(units[1:]), int(neurons[1:]))


@dataclass
class Structure:
    """The options every block offers, and the dense model's scores they are cut by.

    Attributes:
        names: The blocks' full names, in order.
        scores: Per block, FLAP's scores (:class:`netslim.methods.width.BlockScores`).
        moments: Per block, the output projections' input moments (FLAP's fluctuations).
        signals: Per block, the statistics of the attention and MLP output projections'
            inputs in the dense model (``E[x x^T]``, ``E[x]``), which every cut is refitted by.
        cuts: The width options (the same in every block; ``u0 n0`` is the dense block).
        head_dim: Channels per attention head.
    """

    names: list[str]
    scores: list[BlockScores]
    moments: list
    signals: list[tuple[LayerStats, LayerStats]]
    cuts: list[Cut]
    head_dim: int

    @classmethod
    def measure(cls, adapter: ModelAdapter, sweep: Sweep) -> Structure:
        """Score every block and keep the statistics its cuts are refitted by (one sweep of
        the dense model), and lay out the options.

        Raises:
            ConfigError: blocks of different shapes (a model already pruned unevenly).
        """
        outputs = (adapter.spec.attn_out, adapter.spec.mlp_out)
        signals: list = [None] * adapter.num_blocks

        def keeping(needs, **kwargs):  # the scoring sweep, gathering the refit's statistics too
            for index, block in sweep(needs | REFIT_NEEDS, **kwargs):
                signals[index] = tuple(block.layers[f"{adapter.block_name(index)}.{path}"] for path in outputs)
                yield index, block

        scores, moments = score_blocks(FLAP, adapter, keeping)
        shapes = {(s.head_units.numel(), s.neurons.numel()) for s in scores}
        if len(shapes) > 1:
            raise ConfigError("a speed budget needs decoder blocks of one shape; this model's differ "
                              f"({sorted(shapes)}): search the model before any width pruning")
        units, neurons = shapes.pop()
        cuts = [Cut(u, n) for u in range(max(units, 1)) for n in neuron_options(neurons)]
        return cls([adapter.block_name(i) for i in range(adapter.num_blocks)], scores, moments, signals, cuts,
                   adapter.head_dim)

    def labels(self) -> list[str]:
        return [c.label for c in self.cuts] + [DROP]

    def energy(self, index: int, cut: Cut) -> float:
        """Mean squared change of block ``index``'s output with ``cut``: FLAP's scores of the
        removed channels summed (a unit's score is the mean over its query heads' channels)."""
        s = self.scores[index]
        channels = len(s.head_order[0]) * self.head_dim if s.head_order else 0
        heads = float(s.head_units[: cut.units].sum()) * channels if cut.units else 0.0
        neurons = float(torch.sort(s.neurons.float()).values[: cut.neurons].sum()) if cut.neurons else 0.0
        return heads + neurons

    def probe_cut(self) -> Cut:
        """The cut each block's sensitivity is measured with: one attention unit (when it has
        more than one) and the middle of the MLP options."""
        units = max(c.units for c in self.cuts)
        neurons = sorted({c.neurons for c in self.cuts})
        return Cut(min(units, 1), neurons[len(neurons) // 2])

    def cut(self, adapter: ModelAdapter, index: int, cut: Cut) -> None:
        """Apply ``cut`` to block ``index`` of ``adapter``'s model (the dense model, or a copy
        of it), its output projections' kept columns refitted on the dense statistics."""
        if cut.units or cut.neurons:
            cut_block(adapter, index, self.scores[index], cut.units, cut.neurons, self.moments[index], FLAP,
                      self.signals[index])

    def build(self, adapter: ModelAdapter, choice: dict[str, str]) -> list[dict]:
        """Cut every kept block of ``adapter``'s model (a copy of the dense one) as ``choice``
        says, each refitted on the dense statistics; returns the stages still to run on it
        (the blocks to remove, the stored grid)."""
        for index, name in enumerate(self.names):
            if choice[name] != DROP:
                self.cut(adapter, index, Cut.parse(choice[name]))
        surgery.sync_config(adapter)
        return [stage for stage in self.recipe(choice) if stage["method"] != "width"]

    def recipe(self, choice: dict[str, str]) -> list[dict]:
        """The recipe that builds ``choice`` (block name -> label) from the dense model: the
        dropped blocks go first, so that the width stage refits each kept block on the
        states that reach it in the final model."""
        dropped = [i for i, name in enumerate(self.names) if choice[name] == DROP]
        cuts = [Cut.parse(choice[name]) for name in self.names if choice[name] != DROP]
        stages = [{"method": "depth", "remove": dropped}] if dropped else []
        if any(c.units or c.neurons for c in cuts):
            stages.append({"method": "width", "score": FLAP.score, "refit": True,
                           "block_units": [c.units for c in cuts], "block_neurons": [c.neurons for c in cuts]})
        return [*stages, dict(STORE)]

    def as_dict(self) -> dict:
        return {"options": self.labels(), "score": "flap, kept columns refitted", "store": STORE,
                "levels": LEVELS, "min_kept": MIN_KEPT}


def neuron_options(width: int) -> list[int]:
    """MLP neurons a block may lose: steps of an eighth of ``width`` (kept widths multiples of
    :data:`NEURON_MULTIPLE` from 512 neurons on), keeping at least :data:`MIN_KEPT` of it."""
    step = max(width // LEVELS, 1)
    if width >= 512:
        step = max(NEURON_MULTIPLE, NEURON_MULTIPLE * round(step / NEURON_MULTIPLE))
    return [k * step for k in range(width // step + 1) if width - k * step >= MIN_KEPT * width]


@contextlib.contextmanager
def swapped(adapter: ModelAdapter, index: int, block: nn.Module) -> Iterator[None]:
    """The model with ``block`` in place of block ``index``."""
    original = adapter.blocks[index]
    adapter.blocks[index] = block
    try:
        yield
    finally:
        adapter.blocks[index] = original


def cut_copy(adapter: ModelAdapter, structure: Structure, index: int, cut: Cut) -> nn.Module:
    """A copy of block ``index`` with ``cut`` applied and refitted (the original is untouched)."""
    block = copy.deepcopy(adapter.blocks[index])
    with swapped(adapter, index, block):
        structure.cut(adapter, index, cut)
    return block


@dataclass(frozen=True)
class LatencyTable:
    """Seconds of one prefill window per block option, and of what is not a block.

    Attributes:
        blocks: Option label -> seconds of one block of that shape (:data:`DROP`: 0).
        fixed: Seconds of the rest of the model's prefill (embeddings, final norm, head, cache).
        dense: The dense model's measured prefill, seconds.
        threads / tokens: What was timed.
    """

    blocks: dict[str, float]
    fixed: float
    dense: float
    threads: int
    tokens: int

    def predict(self, choice: dict[str, str]) -> float:
        return self.fixed + sum(self.blocks[label] for label in choice.values())

    def as_dict(self) -> dict:
        return {"blocks": self.blocks, "fixed": self.fixed, "dense": self.dense, "threads": self.threads,
                "tokens": self.tokens}

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls(data["blocks"], data["fixed"], data["dense"], data["threads"], data["tokens"])


def latency_table(adapter: ModelAdapter, structure: Structure, window: torch.Tensor, repeats: int = 7,
                  warmup: int = 2, progress: bool = False) -> LatencyTable:
    """Time every block shape of ``structure`` and the dense model's prefill on ``window`` (1, tokens)."""
    hidden, calls = capture_block_inputs(adapter, window)
    shapes = {c.label: cut_copy(adapter, structure, 0, c) for c in tqdm(structure.cuts, desc="search: block shapes",
                                                                       unit="shape", disable=not progress)}
    runs: dict[str, list[float]] = {label: [] for label in shapes}
    model_runs: list[float] = []
    with num_threads(None) as threads, torch.inference_mode():
        for run in range(warmup + repeats):
            model_seconds = prefill_once(adapter.model, window)
            for label, block in shapes.items():
                seconds = _block_seconds(block, hidden, calls[0])
                if run >= warmup:
                    runs[label].append(seconds)
            if run >= warmup:
                model_runs.append(model_seconds)
    blocks = {label: statistics.median(r) for label, r in runs.items()}
    dense = statistics.median(model_runs)
    fixed = max(dense - adapter.num_blocks * blocks[Cut(0, 0).label], 0.0)
    return LatencyTable({**blocks, DROP: 0.0}, fixed, dense, threads, int(window.shape[1]))


def _block_seconds(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> float:
    start = time.perf_counter()
    run_block(block, hidden, call)
    return time.perf_counter() - start


@dataclass
class StructureProxies:
    """Per block: nats of loss per unit of cut energy, and the rise with the block removed."""

    sensitivity: dict[int, float]
    drop_rise: dict[int, float]
    probe_rise: dict[int, float]

    def as_dict(self) -> dict:
        return {"sensitivity": _str_keys(self.sensitivity), "drop_rise": _str_keys(self.drop_rise),
                "probe_rise": _str_keys(self.probe_rise)}

    @classmethod
    def from_dict(cls, data: dict) -> StructureProxies:
        return cls(*({int(k): v for k, v in data[key].items()} for key in ("sensitivity", "drop_rise", "probe_rise")))


def _str_keys(values: dict[int, float]) -> dict[str, float]:
    return {str(k): v for k, v in values.items()}


def measure_probes(adapter: ModelAdapter, structure: Structure, probe: torch.Tensor,
                   progress: bool = True) -> StructureProxies:
    """Per block, the loss rise on ``probe`` with its probe cut and with it skipped (module
    docstring). The dense states entering each block are kept, so a probe of block ``i`` runs
    only the blocks from ``i`` on."""
    ids = probe.to(adapter.device)
    cut = structure.probe_cut()
    probe_rise, drop_rise = {}, {}
    with torch.no_grad():
        hidden, calls = capture_block_inputs(adapter, ids)
        dense = tail_loss(adapter, hidden, calls, 0, ids)
        for index in tqdm(range(adapter.num_blocks), desc="search: block probes", unit="block", disable=not progress):
            with swapped(adapter, index, cut_copy(adapter, structure, index, cut)):
                probe_rise[index] = tail_loss(adapter, hidden, calls, index, ids) - dense
            drop_rise[index] = tail_loss(adapter, hidden, calls, index + 1, ids) - dense
            hidden = run_block(adapter.blocks[index], hidden, calls[index], 1)
    energies = {i: structure.energy(i, cut) for i in probe_rise}
    overall = max(sum(probe_rise.values()), 0.0) / max(sum(energies.values()), 1e-30)
    sensitivity = {i: max(SHRINK * (rise / energies[i] if energies[i] > 0 else overall) + (1 - SHRINK) * overall,
                          FLOOR * overall) for i, rise in probe_rise.items()}
    return StructureProxies(sensitivity, drop_rise, probe_rise)


def overall_sensitivity(proxies: StructureProxies, structure: Structure) -> float:
    """The model-wide nats per unit of energy (the blocks' probes together)."""
    cut = structure.probe_cut()
    energy = sum(structure.energy(i, cut) for i in proxies.probe_rise)
    return max(sum(proxies.probe_rise.values()), 0.0) / max(energy, 1e-30)


def option_loss(structure: Structure, proxies: StructureProxies, weighting: float = 1.0):
    """Estimated loss rise (nats) of an option on a block; ``weighting`` < 1 flattens the
    blocks' own sensitivities toward the model-wide one (candidates that hedge against them)."""
    overall = overall_sensitivity(proxies, structure)

    def loss(index: int, label: str) -> float:
        if label == DROP:
            return max(proxies.drop_rise[index], 0.0)
        own = proxies.sensitivity[index]
        return own ** weighting * overall ** (1 - weighting) * structure.energy(index, Cut.parse(label))
    return loss
