"""Calibration statistics of a layer's input, accumulated in fp32 over calibration tokens.

Layers that read the same input (q/k/v, gate/up) share one :class:`InputStats`, so ``X^T X``
is built once per group. Methods receive :class:`LayerStats` and must treat it as read-only;
each property returns a fresh tensor, so in-place edits never reach the accumulator.
"""

from __future__ import annotations

import enum

import torch

from netslim.ops.moments import Moments


class Stat(str, enum.Enum):
    """A statistic a method can ask the engine for."""

    ACT_NORM = "act_norm"  # per-input-channel sum of squares over tokens (Wanda, OWL)
    HESSIAN = "hessian"  # X^T X over tokens (SparseGPT, GPTQ, whitening SVD)


class InputStats(Moments):
    """Accumulates statistics of one input activation stream (see :class:`Moments`).

    Args:
        in_features: Width of the input.
        needs: Which statistics to keep (``X^T X`` only for ``Stat.HESSIAN``).
        device: Where to accumulate (the block's device).
    """

    def __init__(self, in_features: int, needs: frozenset[Stat], device: torch.device | str = "cpu"):
        super().__init__(in_features, gram=Stat.HESSIAN in needs, device=device)

    def view(self) -> LayerStats:
        """A read-only view for methods."""
        return LayerStats(self)


class LayerStats:
    """Read-only statistics of one layer's input."""

    def __init__(self, acc: InputStats):
        self._acc = acc

    @property
    def n_tokens(self) -> int:
        """Number of calibration tokens seen."""
        return self._acc.n_tokens

    @property
    def act_norm(self) -> torch.Tensor:
        """L2 norm of each input channel over all tokens, shape (in_features,)."""
        return self._acc.sq_sum.sqrt()

    @property
    def act_sq_mean(self) -> torch.Tensor:
        """Mean of x^2 per input channel, shape (in_features,)."""
        return self._acc.sq_sum / max(self._acc.n_tokens, 1)

    @property
    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / n`` in fp32, shape (in_features, in_features).

        Raises:
            RuntimeError: if the method did not declare ``Stat.HESSIAN`` (a programming error).
        """
        if self._acc.xtx is None:
            raise RuntimeError("Hessian requested but the method's config does not declare Stat.HESSIAN")
        return self._acc.xtx * (2.0 / max(self._acc.n_tokens, 1))
