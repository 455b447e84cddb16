"""Preparing a layer Hessian ``H = 2 X^T X / n`` for optimal-brain-surgeon updates.

GPTQ and SparseGPT need the upper Cholesky factor ``U`` of ``H^-1`` (``H^-1 = U^T U``): row
``i`` of ``U`` carries the update that compensates the error made on column ``i`` onto the
columns after it. This module holds the steps both papers take before the sweep:

1. dead inputs (a zero diagonal entry: the channel was always zero in the calibration data)
   get ``H_ii = 1`` and their weight column is zeroed, since nothing can be learnt about them;
2. dampening adds ``percent * mean(diag(H))`` to the diagonal;
3. the factorization, with a fallback chain when ``H`` is not numerically positive definite
   (duplicated or constant input channels, too few calibration tokens):

   - ``none``: the factorization succeeded at the requested damping;
   - ``damping``: it succeeded after multiplying the damping by 10, 100 or 1000;
   - ``fp64``: it succeeded in float64 at the largest damping;
   - ``diagonal``: every attempt failed (or ``H`` held NaN/inf); ``U`` is the square root of
     the inverse diagonal, which turns the sweep into plain rounding with no compensation.

The fallback actually taken is returned so that the report can record it per layer. No step
ever raises on a singular Hessian.

The chain itself is :func:`damped_factor`, parametrized by the factorization tried at each
step and by what the diagonal fallback returns; every Hessian or Gram matrix netslim factors
goes through it: :func:`inverse_cholesky` here (GPTQ, SparseGPT) and the whitening factor of
SVD-LLM (:func:`netslim.ops.lowrank.cholesky_with_fallback`). Eigendecompositions
(SliceGPT's :func:`netslim.ops.rotation.pca_basis`, EoRA's
:func:`netslim.ops.lowrank.eigen_factors`) do not fail on a semi-definite matrix and need no
chain; they share only :func:`dampen`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch

DAMP_RETRIES = (10.0, 100.0, 1000.0)  # multipliers of the requested damping tried after it


class HessianFallback(str, enum.Enum):
    """Which step of the fallback chain produced the factor (see the module docstring)."""

    NONE = "none"
    DAMPING = "damping"
    FP64 = "fp64"
    DIAGONAL = "diagonal"


@dataclass(frozen=True)
class InverseFactor:
    """The upper Cholesky factor of the damped inverse Hessian and how it was obtained.

    Attributes:
        upper: ``U`` with ``H^-1 = U^T U``, float32, shape (in, in).
        fallback: The step of the fallback chain that succeeded.
        damp: The damping actually added, as a fraction of the mean diagonal.
    """

    upper: torch.Tensor
    fallback: HessianFallback
    damp: float


def dead_inputs(hessian: torch.Tensor) -> torch.Tensor:
    """Boolean mask (in,) of input channels whose diagonal entry is zero."""
    return torch.diagonal(hessian) == 0


def unit_dead_inputs(hessian: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``hessian`` with ``H_ii = 1`` for dead inputs, and the dead-input mask (in,)."""
    hessian = hessian.clone()
    dead = dead_inputs(hessian)
    hessian[dead, dead] = 1.0
    return hessian, dead


def fix_dead_inputs(hessian: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Set ``H_ii = 1`` for dead inputs (on a copy) and zero their columns of ``weight`` in place.

    Args:
        hessian: (in, in), left untouched.
        weight: (out, in), modified in place.

    Returns:
        The repaired copy of ``hessian``.
    """
    hessian, dead = unit_dead_inputs(hessian)
    weight[:, dead] = 0.0
    return hessian


def dampen(hessian: torch.Tensor, percent: float) -> torch.Tensor:
    """``H + percent * mean(diag(H)) * I`` as a new tensor."""
    damped = hessian.clone()
    diag = torch.diagonal(damped)
    diag += percent * diag.mean()
    return damped


def _upper_inverse_factor(hessian: torch.Tensor) -> torch.Tensor | None:
    """``U`` with ``H^-1 = U^T U``, or ``None`` if a factorization hits a non-positive pivot."""
    lower, info = torch.linalg.cholesky_ex(hessian)
    if info.item() != 0:
        return None
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if info.item() != 0 or not torch.isfinite(upper).all():
        return None
    return upper


def _lower_factor(matrix: torch.Tensor) -> torch.Tensor | None:
    """``L`` with ``M = L L^T``, or ``None`` if the factorization fails or is not finite."""
    lower, info = torch.linalg.cholesky_ex(matrix)
    if int(info) != 0 or not torch.isfinite(lower).all():
        return None
    return lower


def damped_diagonal(matrix: torch.Tensor, percent: float, dtype: torch.dtype) -> torch.Tensor:
    """The damped diagonal of ``matrix`` in ``dtype``, positive for any input (NaN/inf become 0)."""
    diag = torch.nan_to_num(torch.diagonal(matrix).to(dtype), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    return diag + percent * diag.mean() + 1e-8


def _damping_schedule(percent: float) -> list[float]:
    """The requested damping, then 10x, 100x, 1000x of it (of 1% when none was requested)."""
    base = percent if percent > 0 else 0.01
    return [percent] + [base * m for m in DAMP_RETRIES]


@dataclass(frozen=True)
class DampedFactor:
    """What :func:`damped_factor` returns: the factor, the step that produced it, the damping."""

    factor: torch.Tensor
    fallback: HessianFallback
    damp: float


def damped_factor(
    matrix: torch.Tensor,
    percent: float,
    factorize: Callable[[torch.Tensor], torch.Tensor | None],
    diagonal: Callable[[torch.Tensor], torch.Tensor],
    diagonal_dtype: torch.dtype = torch.float64,
) -> DampedFactor:
    """Factor ``matrix + d * mean(diag) * I`` through the fallback chain of the module docstring.

    Args:
        matrix: Symmetric positive semi-definite (n, n).
        percent: Damping of the first attempt, as a fraction of the mean diagonal.
        factorize: Damped matrix -> factor, or ``None`` when the factorization fails. Tried in
            float32 at each damping of the schedule, then in float64 at the largest.
        diagonal: The damped diagonal (:func:`damped_diagonal`, in ``diagonal_dtype``) -> the
            factor used when every attempt failed or ``matrix`` holds NaN/inf.

    Returns:
        The factor (as ``factorize`` or ``diagonal`` returned it), the step, the damping.
    """
    schedule = _damping_schedule(percent)
    if torch.isfinite(matrix).all():
        for step, damp in enumerate(schedule):
            factor = factorize(dampen(matrix.float(), damp))
            if factor is not None:
                return DampedFactor(factor, HessianFallback.NONE if step == 0 else HessianFallback.DAMPING, damp)
        factor = factorize(dampen(matrix.double(), schedule[-1]))
        if factor is not None:
            return DampedFactor(factor, HessianFallback.FP64, schedule[-1])
    diag = damped_diagonal(matrix, schedule[-1], diagonal_dtype)
    return DampedFactor(diagonal(diag), HessianFallback.DIAGONAL, schedule[-1])


def inverse_cholesky(hessian: torch.Tensor, percent: float = 0.01) -> InverseFactor:
    """Damp ``hessian`` and factor its inverse, falling back as the module docstring says.

    Args:
        hessian: (in, in) symmetric positive semi-definite, dead inputs already fixed.
        percent: Damping as a fraction of the mean diagonal (0.01 in both papers).

    Returns:
        The factor, the fallback used and the damping applied.
    """
    found = damped_factor(hessian, percent, _upper_inverse_factor, lambda diag: torch.diag(diag.rsqrt()).float())
    return InverseFactor(found.factor.float(), found.fallback, found.damp)


def lower_cholesky(gram: torch.Tensor, percent: float) -> DampedFactor:
    """Lower Cholesky factor ``L`` (``L L^T`` = the damped ``gram``) through the same chain.

    The diagonal fallback is ``sqrt`` of the damped diagonal (computed in ``gram``'s dtype),
    which makes ``L`` a per-channel scaling. The factor keeps the dtype of the attempt that
    succeeded (float64 for the ``fp64`` step).
    """
    return damped_factor(gram, percent, _lower_factor, lambda diag: torch.diag(diag.sqrt()), gram.dtype)
