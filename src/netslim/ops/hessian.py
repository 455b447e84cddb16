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
"""

from __future__ import annotations

import enum
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


def fix_dead_inputs(hessian: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Set ``H_ii = 1`` for dead inputs (on a copy) and zero their columns of ``weight`` in place.

    Args:
        hessian: (in, in), left untouched.
        weight: (out, in), modified in place.

    Returns:
        The repaired copy of ``hessian``.
    """
    hessian = hessian.clone()
    dead = dead_inputs(hessian)
    hessian[dead, dead] = 1.0
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


def _diagonal_factor(hessian: torch.Tensor, percent: float) -> torch.Tensor:
    """Square root of the inverse diagonal; finite for any input."""
    diag = torch.nan_to_num(torch.diagonal(hessian).double(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0.0)
    diag = diag + percent * diag.mean() + 1e-8
    return torch.diag(diag.rsqrt()).float()


def _damping_schedule(percent: float) -> list[float]:
    """The requested damping, then 10x, 100x, 1000x of it (of 1% when none was requested)."""
    base = percent if percent > 0 else 0.01
    return [percent] + [base * m for m in DAMP_RETRIES]


def inverse_cholesky(hessian: torch.Tensor, percent: float = 0.01) -> InverseFactor:
    """Damp ``hessian`` and factor its inverse, falling back as the module docstring says.

    Args:
        hessian: (in, in) symmetric positive semi-definite, dead inputs already fixed.
        percent: Damping as a fraction of the mean diagonal (0.01 in both papers).

    Returns:
        The factor, the fallback used and the damping applied.
    """
    schedule = _damping_schedule(percent)
    if torch.isfinite(hessian).all():
        for step, damp in enumerate(schedule):
            upper = _upper_inverse_factor(dampen(hessian.float(), damp))
            if upper is not None:
                return InverseFactor(upper, HessianFallback.NONE if step == 0 else HessianFallback.DAMPING, damp)
        upper = _upper_inverse_factor(dampen(hessian.double(), schedule[-1]))
        if upper is not None:
            return InverseFactor(upper.float(), HessianFallback.FP64, schedule[-1])
    return InverseFactor(_diagonal_factor(hessian, schedule[-1]), HessianFallback.DIAGONAL, schedule[-1])
