"""Low-rank math: truncated SVD in a scaled space, Cholesky whitening, eigen-space projection.

Every factorization here has the same shape. A weight ``W`` (out, in) is mapped into a space
where the Frobenius error is the error we care about, ``W' = W S``; the SVD of ``W'`` is
truncated to rank ``r``; and the right factor is mapped back, ``down = V_r^T S^{-1}``. The
result is two factors ``up`` (out, r) and ``down`` (r, in) with ``W ~= up @ down``.

- plain SVD: ``S = I``; the dropped singular values measure ``||W - W_r||_F``.
- ASVD (Yuan et al. 2023): ``S = diag(s)`` with ``s_j`` the activation magnitude of input
  channel ``j`` raised to a power ``alpha`` (the paper uses the mean absolute value; netslim
  uses the root mean square, from the engine's ``ACT_NORM`` statistics).
- SVD-LLM (Wang et al. 2024): ``S`` the lower Cholesky factor of ``X X^T`` (here ``X^T X``
  of the (tokens, in) activation matrix), so ``||(W - W_r) X||_F^2 = ||(W S) - (W S)_r||_F^2``
  is the sum of the squared dropped singular values: each one is exactly a loss on the data.
- EoRA (Liu et al. 2024): ``S = Q diag(sqrt(lambda))`` from the eigendecomposition of
  ``X^T X``; used on a compression error ``W - W_c`` rather than on ``W``.

All functions are pure: tensors in, tensors out, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from netslim.ops.hessian import HessianFallback, lower_cholesky, unit_dead_inputs


@dataclass(frozen=True)
class Factors:
    """A rank-``r`` factorization ``W ~= up @ down``.

    Attributes:
        up: Left factor, shape (out, r).
        down: Right factor, shape (r, in).
        spectrum: All singular values of the scaled weight, descending, shape (min(out, in),).
    """

    up: torch.Tensor
    down: torch.Tensor
    spectrum: torch.Tensor

    @property
    def rank(self) -> int:
        """The kept rank ``r``."""
        return self.up.shape[1]

    def dropped_energy(self) -> float:
        """Sum of the squared singular values that were dropped."""
        return float(self.spectrum[self.rank :].double().square().sum())


@dataclass(frozen=True)
class Whitening:
    """A lower-triangular square-root factor ``S`` of a Gram matrix (``S S^T ~= X^T X``).

    Attributes:
        factor: ``S``, shape (in, in), lower triangular.
        fallback: Which step of the fallback chain produced it (as in :mod:`netslim.ops.hessian`).
        damping: Diagonal damping added, as a fraction of the mean diagonal.
    """

    factor: torch.Tensor
    fallback: HessianFallback
    damping: float

    def describe(self) -> dict:
        """Report fields: which fallback was needed."""
        return {"whitening_fallback": self.fallback.value, "whitening_damping": self.damping}


def cholesky_with_fallback(gram: torch.Tensor, damping: float = 1e-6) -> Whitening:
    """Lower Cholesky factor of ``gram + d * mean(diag) * I``, never raising.

    The fallback chain is the one GPTQ and SparseGPT use (:func:`netslim.ops.hessian.damped_factor`):
    the requested damping in fp32; then 10x, 100x and 1000x of it; then fp64 at the largest; then
    (NaN/inf statistics, or every attempt failed) the diagonal ``sqrt(diag(gram))``, which
    turns whitening into a per-channel scaling. Channels that never fire get a unit diagonal.

    Args:
        gram: Symmetric positive semi-definite matrix, shape (n, n).
        damping: Relative diagonal damping of the first attempt.
    """
    found = lower_cholesky(unit_dead_inputs(gram.float())[0], damping)
    return Whitening(found.factor, found.fallback, found.damp)


def truncate(scaled: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` SVD of ``scaled`` (out, in): ``(U_r * s_r, V_r^T, all singular values)``.

    The singular values are folded into the left factor. Computed in fp64 for exactness.
    ``rank=0`` computes only the singular values (for rank planning), about twice as fast.
    """
    if rank == 0:
        scaled = scaled.double()
        return scaled.new_zeros(scaled.shape[0], 0), scaled.new_zeros(0, scaled.shape[1]), torch.linalg.svdvals(scaled)
    u, s, vh = torch.linalg.svd(scaled.double(), full_matrices=False)
    return u[:, :rank] * s[:rank], vh[:rank], s


def _factors(weight: torch.Tensor, scaled: torch.Tensor, rank: int, unscale) -> Factors:
    up, down, spectrum = truncate(scaled, rank)
    return Factors(up.to(weight.dtype), unscale(down).to(weight.dtype), spectrum.float())


def svd_factors(weight: torch.Tensor, rank: int) -> Factors:
    """Plain truncated SVD of ``weight`` (out, in)."""
    return _factors(weight, weight, rank, lambda down: down)


def diagonal_factors(weight: torch.Tensor, rank: int, scale: torch.Tensor) -> Factors:
    """Truncated SVD of ``weight @ diag(scale)``, mapped back (ASVD).

    Args:
        scale: Positive per-input-channel scale, shape (in,).
    """
    scale = scale.double().clamp_min(1e-8)
    return _factors(weight, weight.double() * scale, rank, lambda down: down / scale)


def whitened_factors(weight: torch.Tensor, rank: int, whitening: Whitening) -> Factors:
    """Truncated SVD of ``weight @ S``, mapped back with ``S^{-1}`` (SVD-LLM).

    The squared singular values dropped equal ``||(W - up @ down) X||_F^2`` for any ``X``
    with ``X^T X = S S^T``.
    """
    factor = whitening.factor.double()

    def unscale(down: torch.Tensor) -> torch.Tensor:  # down @ S^{-1}, by a triangular solve
        return torch.linalg.solve_triangular(factor, down, upper=False, left=False)

    return _factors(weight, weight.double() @ factor, rank, unscale)


def asvd_scale(magnitude: torch.Tensor, alpha: float) -> torch.Tensor:
    """ASVD's input-channel scale ``magnitude_j ** alpha``, normalized to mean 1.

    Args:
        magnitude: Per-input-channel activation magnitude, shape (in,) (mean ``|x|`` in the
            paper; the methods pass the root mean square).
    """
    scale = magnitude.double().clamp_min(1e-8).pow(alpha)
    return scale / scale.mean()


def eigen_factors(error: torch.Tensor, rank: int, gram: torch.Tensor, eps: float = 1e-6) -> Factors:
    """Rank-``rank`` approximation of ``error`` (out, in) in the eigenspace of ``gram`` (EoRA).

    With ``X^T X = Q diag(lambda) Q^T``, the error is projected as ``E Q diag(sqrt(lambda))``,
    truncated by SVD, and mapped back with ``diag(1/sqrt(lambda)) Q^T``, so the kept part
    minimizes ``||(E - up @ down) X||_F``. Eigenvalues below ``eps`` times the largest are
    clamped to it.

    No Cholesky fallback chain (:mod:`netslim.ops.hessian`) here: ``eigh`` of a semi-definite
    matrix does not fail, and clamping the eigenvalues is what keeps the map back finite.
    """
    values, vectors = torch.linalg.eigh(gram.double())
    root = values.clamp_min(eps * float(values.max())).sqrt()
    projection = vectors * root  # Q diag(sqrt(lambda)), (in, in)
    return _factors(error, error.double() @ projection, rank, lambda down: (down / root) @ vectors.t())


def factorized_params(out_features: int, in_features: int, rank: int) -> int:
    """Weights of the two factors of an (out, in) matrix at ``rank``."""
    return rank * (out_features + in_features)


def max_useful_rank(out_features: int, in_features: int) -> int:
    """Largest rank at which the factorized form is strictly smaller than the dense one."""
    return (out_features * in_features - 1) // (out_features + in_features)
