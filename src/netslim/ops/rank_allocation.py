"""Choosing the rank of every matrix of a model so that a target parameter ratio is met.

Two policies, both over a set of (out, in) matrices:

- :func:`uniform_ranks`: every matrix keeps the same fraction of its parameters,
  ``r = floor(keep * out * in / (out + in))`` (the SVD-LLM definition of a compression ratio).
- :func:`sensitivity_ranks`: ranks are chosen globally from each matrix's spectrum. Dropping
  singular value ``i`` of a matrix costs ``sigma_i^2 / sum(sigma^2)`` (for the whitened
  spectrum, the share of the layer's output energy on the calibration data that is lost) and
  saves ``out + in`` parameters. A Lagrange multiplier ``lam`` trades the two: each matrix
  takes the rank minimizing ``loss(r) + lam * params(r)``, and ``lam`` is bisected until the
  total meets the budget. This is the exact optimum on the convex hull of each matrix's
  loss-versus-size curve, so matrices whose spectrum decays fast give up more rank.

Either way a matrix is never factorized at a rank where the two factors hold as many
parameters as the dense matrix: it stays dense instead (rank ``None``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import torch

from netslim.errors import ConfigError
from netslim.ops.lowrank import factorized_params, max_useful_rank


@dataclass(frozen=True)
class MatrixSpectrum:
    """One matrix to allocate: its shape and its (scaled) singular values, descending."""

    out_features: int
    in_features: int
    spectrum: torch.Tensor

    @property
    def dense_params(self) -> int:
        """Parameters of the dense matrix."""
        return self.out_features * self.in_features


def uniform_rank(out_features: int, in_features: int, keep: float) -> int | None:
    """Rank keeping a fraction ``keep`` of an (out, in) matrix's parameters; ``None``: stay dense."""
    rank = max(1, int(keep * out_features * in_features / (out_features + in_features)))
    return rank if rank <= max_useful_rank(out_features, in_features) else None


def uniform_ranks(shapes: dict[str, tuple[int, int]], remove: float) -> dict[str, int | None]:
    """:func:`uniform_rank` for every (out, in) shape, removing a fraction ``remove``."""
    _check_ratio(remove)
    return {name: uniform_rank(out, inp, 1.0 - remove) for name, (out, inp) in shapes.items()}


def allocated_params(matrices: dict[str, MatrixSpectrum], ranks: dict[str, int | None]) -> int:
    """Total parameters of the matrices at ``ranks`` (``None`` counts as dense)."""
    total = 0
    for name, m in matrices.items():
        rank = ranks[name]
        total += m.dense_params if rank is None else factorized_params(m.out_features, m.in_features, rank)
    return total


def sensitivity_ranks(matrices: dict[str, MatrixSpectrum], remove: float, steps: int = 100) -> dict[str, int | None]:
    """Global ranks removing at least a fraction ``remove`` of the matrices' parameters.

    Args:
        matrices: Name -> shape and spectrum.
        remove: Fraction of the total parameters of ``matrices`` to remove, in (0, 1).
        steps: Bisection steps on the multiplier (in log space).

    Raises:
        ConfigError: if ``remove`` is outside (0, 1) or cannot be reached even at rank 1.
    """
    _check_ratio(remove)
    budget = (1.0 - remove) * sum(m.dense_params for m in matrices.values())
    curves = {name: _loss_curve(m) for name, m in matrices.items()}
    low, high = -30.0, 10.0  # log10 of the multiplier: near-dense ... rank 1 everywhere
    best = _choose(matrices, curves, 10.0**high)
    if allocated_params(matrices, best) > budget:
        raise ConfigError(f"removing {remove:.0%} of the parameters needs ranks below 1; lower the ratio")
    for _ in range(steps):
        middle = (low + high) / 2
        ranks = _choose(matrices, curves, 10.0**middle)
        if allocated_params(matrices, ranks) <= budget:
            high, best = middle, ranks
        else:
            low = middle
    return _top_up(matrices, curves, best, budget - allocated_params(matrices, best))


def _top_up(matrices, curves, ranks: dict[str, int | None], spare: float) -> dict[str, int | None]:
    """Spend the budget the multiplier left (where a loss curve is not strictly convex) on the
    factorized matrices' next singular values, largest loss saved per parameter first."""
    ranks = dict(ranks)
    heap = [(-_gain(curves[n], r, matrices[n]), n) for n, r in ranks.items() if r is not None and r < curves[n].numel()]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        step = matrices[name].out_features + matrices[name].in_features
        if step > spare:
            continue
        ranks[name] += 1
        spare -= step
        if ranks[name] < curves[name].numel():
            heapq.heappush(heap, (-_gain(curves[name], ranks[name], matrices[name]), name))
    return ranks


def _gain(curve: torch.Tensor, rank: int, m: MatrixSpectrum) -> float:
    """Loss saved per parameter by going from ``rank`` to ``rank + 1``."""
    return float(curve[rank - 1] - curve[rank]) / (m.out_features + m.in_features)


def _loss_curve(m: MatrixSpectrum) -> torch.Tensor:
    """Normalized loss at ranks 1..max_useful_rank: the share of squared spectrum dropped."""
    energy = m.spectrum.double().square()
    share = energy / energy.sum().clamp_min(1e-30)
    tail = share.flip(0).cumsum(0).flip(0)  # tail[i] = share dropped when keeping rank i
    top = max_useful_rank(m.out_features, m.in_features)
    kept = torch.arange(1, top + 1)
    return torch.where(kept < tail.numel(), tail[kept.clamp_max(tail.numel() - 1)], torch.zeros(()).double())


def _choose(matrices: dict[str, MatrixSpectrum], curves: dict[str, torch.Tensor], lam: float) -> dict[str, int | None]:
    ranks: dict[str, int | None] = {}
    for name, m in matrices.items():
        curve = curves[name]
        sizes = torch.arange(1, curve.numel() + 1, dtype=torch.float64) * (m.out_features + m.in_features)
        costs = curve + lam * sizes
        index = int(torch.argmin(costs)) if curve.numel() else -1
        dense_cost = lam * m.dense_params
        ranks[name] = index + 1 if index >= 0 and float(costs[index]) < dense_cost else None
    return ranks


def _check_ratio(remove: float) -> None:
    if not 0.0 < remove < 1.0:
        raise ConfigError(f"ratio={remove}: the fraction of parameters to remove must be in (0, 1)")
