"""Pure math of structured pruning: channel scores, allocation, bias compensation, refits.

A *channel* is one input column of an output projection (``o_proj`` / ``down_proj``) together
with the rows of the input projections that produce it. Heads are groups of ``head_dim``
channels; MLP neurons are single channels. Nothing here sees a model.

References: FLAP (An et al., 2024, https://arxiv.org/abs/2312.11983) for the fluctuation
metric, standardized global allocation and bias compensation; the least-squares refit of
the kept columns is the structured OBS update of ZipLM (Kurtic et al., 2023,
https://arxiv.org/abs/2302.04089) with the mean as an intercept; Wanda (Sun et al., 2023) for
activation-weighted scores; LLM-Pruner (Ma et al., 2023) for first-order Taylor scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from netslim.ops.moments import Moments


def magnitude_scores(w_out: torch.Tensor, w_ins: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of every weight of a channel: its output column and its input rows.

    Args:
        w_out: Output projection weight, (out, channels).
        w_ins: Input projection weights whose rows map one-to-one to the channels, (channels, in).
    """
    sq = w_out.float().square().sum(0)
    for w in w_ins:
        sq = sq + w.float().square().sum(1)
    return sq.sqrt()


def wanda_scores(w_out: torch.Tensor, stats: Moments) -> torch.Tensor:
    """Activation-weighted column magnitude: ``||X_j|| * sum_i |W_ij|`` (Wanda, per channel)."""
    return stats.norm.float() * w_out.float().abs().sum(0)


def fluctuation_scores(w_out: torch.Tensor, stats: Moments) -> torch.Tensor:
    """FLAP's fluctuation metric: ``Var(X_j) * ||W_:,j||^2``.

    A channel whose input barely varies can be replaced by its mean, which bias compensation
    then folds into the output bias.
    """
    return stats.variance.float() * w_out.float().square().sum(0)


def taylor_scores(pairs: list[tuple[torch.Tensor, torch.Tensor, int]]) -> torch.Tensor:
    """First-order Taylor importance ``|sum w * dL/dw|`` over each channel's weights.

    Args:
        pairs: ``(weight, grad, dim)`` per projection, where ``dim`` is the axis indexing the
            channels (1 for the output projection's columns, 0 for the input rows).
    """
    total = None
    for weight, grad, dim in pairs:
        part = (weight.float() * grad.float()).sum(1 - dim)
        total = part if total is None else total + part
    return total.abs()


def group_scores(channel_scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Mean of consecutive groups of ``group_size`` channels (heads from their channels)."""
    return channel_scores.reshape(-1, group_size).mean(1)


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance scores, so that layers compete on a common scale (FLAP)."""
    if scores.numel() < 2:
        return torch.zeros_like(scores)
    std = scores.std()
    return (scores - scores.mean()) / (std if std > 0 else 1.0)


@dataclass(frozen=True)
class Candidate:
    """One removable unit in global allocation.

    Attributes:
        pool: Which pool it belongs to (a layer's heads or neurons), e.g. ``(3, "mlp")``.
        rank: Position within its pool; units of a pool are removed in rank order.
        score: Standardized score (lower is removed first).
        cost: Parameters its removal frees.
    """

    pool: tuple
    rank: int
    score: float
    cost: int


def global_allocation(candidates: list[Candidate], budget: int, pool_sizes: dict[tuple, int]) -> dict[tuple, int]:
    """How many units of each pool to remove so that at least ``budget`` parameters go.

    Units are taken in increasing standardized score, each pool in its own rank order, and
    every pool keeps at least one unit.

    Returns:
        Pool -> number of units removed.
    """
    removed = {pool: 0 for pool in pool_sizes}
    freed = 0
    for cand in sorted(candidates, key=lambda c: (c.score, c.rank)):
        if freed >= budget:
            break
        pool = cand.pool
        if cand.rank != removed[pool] or removed[pool] + 1 >= pool_sizes[pool]:
            continue
        removed[pool] += 1
        freed += cand.cost
    return removed


def uniform_counts(
    n_heads: int, head_cost: int, n_neurons: int, neuron_cost: int, ratio: float, total: int | None = None
) -> tuple[int, int]:
    """Heads and neurons to remove from one layer to free ``ratio`` of its parameters.

    Heads are coarse, so the head count is rounded first and the MLP absorbs the remainder.

    Args:
        total: The parameters ``ratio`` refers to; defaults to those of the removable units.
            Give the layer's full count when some parameters can never be removed (the
            key/value projections when only query heads go).
    """
    total = n_heads * head_cost + n_neurons * neuron_cost if total is None else total
    heads = min(round(ratio * n_heads), n_heads - 1)
    target = ratio * total - heads * head_cost
    neurons = min(max(round(target / neuron_cost), 0), n_neurons - 1)
    return heads, neurons


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Sorted indices of the ``count`` lowest scores."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.sort(torch.topk(scores, count, largest=False).indices).values


def complement(size: int, removed: torch.Tensor) -> torch.Tensor:
    """Sorted indices in ``range(size)`` not in ``removed``."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[removed] = False
    return keep.nonzero().flatten()


def compensation_bias(w_out: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """Bias that replaces removed channels by their mean contribution: ``W[:, R] @ E[x_R]``."""
    return w_out[:, removed].double() @ mean[removed].to(w_out.device).double()


def refit_columns(w_out: torch.Tensor, second: torch.Tensor, mean: torch.Tensor, removed: torch.Tensor,
                  damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The kept input columns of ``w_out`` refitted by least squares when the columns ``removed`` go.

    Each removed channel is regressed on the kept ones over the calibration tokens,
    ``x_R ~ A x_K + c`` with ``A = C_RK C_KK^-1`` and ``c = E[x_R] - A E[x_K]`` (``C`` the
    covariance, its kept block damped by ``damp`` times its mean diagonal), so that
    ``W x ~ (W_K + W_R A) x_K + W_R c``: the output's mean squared error over the calibration
    is the least any bias and kept columns reach. With ``A = 0`` this is :func:`compensation_bias`.

    Args:
        w_out: The projection's weight, (out, in).
        second: ``E[x x^T]`` of its input over the calibration, (in, in).
        mean: ``E[x]``, (in,).
        removed: Indices of the input columns that go.

    Returns:
        The kept columns' new weights (out, kept), float64, and the bias to add, (out,).
    """
    kept = complement(w_out.shape[1], removed)
    mu = mean.double().to(w_out.device)
    cov = second.double().to(w_out.device) - torch.outer(mu, mu)
    c_kk = cov[kept][:, kept]
    c_kk.diagonal().add_(damp * float(c_kk.diagonal().mean().clamp_min(1e-12)))
    w = w_out.double()
    w_r = w[:, removed]
    delta = torch.linalg.solve(c_kk, cov[kept][:, removed] @ w_r.t()).t()  # W_R A, (out, kept)
    return w[:, kept] + delta, w_r @ mu[removed] - delta @ mu[kept]
