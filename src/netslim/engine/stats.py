"""Calibration statistics the engine gathers for the methods, accumulated over calibration tokens.

A method names what it needs as :class:`Stat` values (its config's ``needs``); the engine
owns every hook and accumulator and hands methods read-only views:

- :class:`LayerStats` of one projection's input (or of any signal inside a block, for block
  methods): ``||X_j||`` and ``X^T X`` in float32 on the block's device (Wanda, OWL, GPTQ,
  SparseGPT, SVD-LLM); per-channel mean and variance in float64 on the CPU (FLAP); ``X^T X`` of
  a whole residual signal in float64 (SliceGPT); summed gradients ``dL/dW`` (Taylor scores).
- :class:`BlockStats` of one block in a statistics-only sweep: its layers' stats, and the
  block-level ones (the cosine similarity of its input and output, ShortGPT; the calibration
  loss with the block skipped).

Layers that read the same input (q/k/v, gate/up) share one :class:`InputStats`, so ``X^T X``
is built once per group. Each property returns a fresh tensor, so in-place edits never reach
the accumulator.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from netslim.engine.distributed import all_sum, world_size
from netslim.ops.moments import Moments
from netslim.ops.rotation import gram_accumulator


class Stat(str, enum.Enum):
    """A statistic a method can ask the engine for."""

    ACT_NORM = "act_norm"  # per-input-channel sum of squares over tokens, float32 (Wanda, OWL)
    HESSIAN = "hessian"  # X^T X over tokens, float32 (SparseGPT, GPTQ, whitening SVD)
    MOMENTS = "moments"  # per-channel mean and variance, float64 on the CPU (FLAP)
    GRAM = "gram"  # X^T X of a whole signal, float32 chunks summed in float64 (SliceGPT)
    GRADIENT = "gradient"  # summed dL/dW of every block projection (Taylor scores); sweeps only
    BLOCK_COSINE = "block_cosine"  # mean cosine of each block's input and output (ShortGPT); sweeps only
    SKIP_LOSS = "skip_loss"  # calibration NLL with the block skipped, the others as they are; sweeps only


LAYER_STATS = frozenset({Stat.ACT_NORM, Stat.HESSIAN, Stat.MOMENTS, Stat.GRAM})


class InputStats:
    """Accumulates the statistics in ``needs`` of one activation stream of width ``in_features``.

    Args:
        in_features: Width of the stream (its last dimension).
        needs: Which statistics to keep; those outside :data:`LAYER_STATS` are ignored here.
        device: Where the float32 sums live (the block's device).
    """

    def __init__(self, in_features: int, needs: frozenset[Stat], device: torch.device | str = "cpu"):
        self.fp32 = Moments(in_features, gram=Stat.HESSIAN in needs, device=device)
        self.fp64 = Moments(in_features, mean=True, dtype=torch.float64) if Stat.MOMENTS in needs else None
        self.signal = gram_accumulator(in_features, device) if Stat.GRAM in needs else None

    @classmethod
    def white(cls, in_features: int, needs: frozenset[Stat], device: torch.device | str = "cpu") -> InputStats:
        """The statistics of white inputs (``X = I``: every channel alike, none correlated).

        A layer that no calibration token reached (an expert the router never picked) is
        compressed with these, so each method falls back to its weights-only form: Wanda and
        SparseGPT to magnitude pruning, GPTQ to round-to-nearest, SVD-LLM to a plain SVD.
        """
        stats = cls(in_features, needs, device)
        stats.add(torch.eye(in_features, device=device))
        return stats

    def add(self, x: torch.Tensor) -> None:
        """Add activations of shape (..., in_features)."""
        for acc in (self.fp32, self.fp64, self.signal):
            if acc is not None:
                acc.add(x)

    @property
    def n_tokens(self) -> int:
        """Number of tokens seen."""
        return self.fp32.n_tokens

    def all_reduce(self) -> None:
        """Sum the statistics over the processes of the group (:mod:`netslim.engine.distributed`);
        nothing without one."""
        if world_size() == 1:
            return
        for acc in (self.fp32, self.fp64, self.signal):
            if acc is not None:
                count = torch.tensor([float(acc.n_tokens)], dtype=torch.float64, device=acc.device)
                all_sum([count, *acc.sums()])
                acc.n_tokens = int(count.item())

    def view(self, grad: torch.Tensor | None = None) -> LayerStats:
        """A read-only view for methods (``grad``: the layer's summed gradient, if swept)."""
        return LayerStats(self, grad)


class LayerStats:
    """Read-only statistics of one layer's input (or one signal of a block)."""

    def __init__(self, acc: InputStats | None, grad: torch.Tensor | None = None):
        self._acc = acc
        self._grad = grad

    @property
    def n_tokens(self) -> int:
        """Number of calibration tokens seen."""
        return 0 if self._acc is None else self._acc.n_tokens

    @property
    def act_norm(self) -> torch.Tensor:
        """L2 norm of each input channel over all tokens, shape (in_features,)."""
        return self._acc.fp32.sq_sum.sqrt()

    @property
    def act_sq_mean(self) -> torch.Tensor:
        """Mean of x^2 per input channel, shape (in_features,)."""
        return self._acc.fp32.sq_sum / max(self._acc.n_tokens, 1)

    @property
    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / n`` in fp32, shape (in_features, in_features)."""
        xtx = self._need(self._acc.fp32.xtx, Stat.HESSIAN)
        return xtx * (2.0 / max(self._acc.n_tokens, 1))

    @property
    def moments(self) -> Moments:
        """Float64 per-channel moments (``mean``, ``norm``, ``variance``); do not add to it."""
        return self._need(self._acc.fp64 if self._acc is not None else None, Stat.MOMENTS)

    @property
    def gram(self) -> torch.Tensor:
        """``X^T X`` in float64, shape (in_features, in_features)."""
        signal = self._need(self._acc.signal if self._acc is not None else None, Stat.GRAM)
        return signal.xtx.clone()

    @property
    def grad(self) -> torch.Tensor:
        """``sum dL/dW`` of the layer's weight (out, in) over the gradient windows of the sweep."""
        return self._need(self._grad, Stat.GRADIENT).clone()

    @staticmethod
    def _need(value, stat: Stat):
        if value is None:
            raise RuntimeError(f"{stat.value} requested but the method's config does not declare Stat.{stat.name}")
        return value


@dataclass
class BlockStats:
    """What a statistics-only sweep gathered for one block.

    Attributes:
        layers: Input statistics per projection name (:class:`LayerStats`).
        cosine: Mean cosine similarity of the block's input and output over the tokens
            (``Stat.BLOCK_COSINE``).
        skip_loss: Mean next-token NLL over the sweep's windows with this block skipped
            (``Stat.SKIP_LOSS``).
    """

    layers: dict[str, LayerStats] = field(default_factory=dict)
    cosine: float | None = None
    skip_loss: float | None = None
