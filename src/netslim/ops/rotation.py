"""Orthogonal bases from activations, and rotating weights into them (pure tensor math).

SliceGPT (https://arxiv.org/abs/2401.15024) rotates each residual-stream signal X (tokens x d)
into its principal basis Q, the eigenvectors of ``X^T X`` sorted by decreasing eigenvalue, and
keeps the first k columns. For a Linear ``y = x W^T`` that reads the signal, feeding it the
rotated signal ``x Q`` needs ``W Q``; for one that writes it, producing ``y Q`` needs
``Q^T W`` (and ``Q^T b``). Nothing here sees a model.
"""

from __future__ import annotations

import torch

from netslim.ops.hessian import dampen
from netslim.ops.moments import Moments


GRAM_CHUNK = 4096  # tokens per float32 product summed in float64


def gram_accumulator(width: int, device: torch.device | str = "cpu", chunk: int = GRAM_CHUNK) -> Moments:
    """An accumulator of ``X^T X`` of a whole signal: products of ``chunk`` tokens formed in
    float32 (fast) and summed in float64, so long calibration sets keep the precision of the sum."""
    return Moments(width, squares=False, gram=True, dtype=torch.float64, device=device,
                   compute_dtype=torch.float32, chunk=chunk)


def gram(x: torch.Tensor, chunk: int = GRAM_CHUNK) -> torch.Tensor:
    """``X^T X`` of activations (..., d) in float64, shape (d, d) (see :func:`gram_accumulator`)."""
    acc = gram_accumulator(x.shape[-1], x.device, chunk)
    acc.add(x)
    return acc.xtx


def pca_basis(xtx: torch.Tensor, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and orthogonal eigenvectors (columns) of a Gram matrix.

    Args:
        xtx: ``X^T X``, shape (d, d), symmetric positive semi-definite.
        damp: Fraction of the mean diagonal added to the diagonal first, so that directions
            the data never visits still get a well-defined (last-ranked) basis vector.

    Returns:
        ``(eigenvalues, Q)`` in float64, ``Q`` of shape (d, d) with ``Q^T Q = I``.
    """
    # An eigendecomposition, not a factorization: eigh does not fail on a semi-definite matrix,
    # so the Cholesky fallback chain of netslim.ops.hessian does not apply; only its damping.
    values, vectors = torch.linalg.eigh(dampen(xtx.double(), damp))
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


def rotate_input(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``W Q``: the (out, k) weight that reads a signal given in the first k basis directions.

    Args:
        weight: (out, d) weight reading the unrotated signal.
        basis: (d, k) orthonormal columns.
    """
    return (weight.double() @ basis.double()).to(weight.dtype)


def rotate_output(weight: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``Q^T W``: the (k, in) weight (or (k,) bias) that writes the signal in the basis.

    Args:
        weight: (d, in) weight or (d,) bias writing the unrotated signal.
        basis: (d, k) orthonormal columns.
    """
    return (basis.double().t() @ weight.double()).to(weight.dtype)


def sliced_width(width: int, fraction: float, multiple: int = 1) -> int:
    """Width kept when slicing ``fraction`` of ``width``, rounded down to ``multiple``.

    Never below ``multiple`` (or 1), so a block always keeps some of its residual stream.

    Example:
        >>> sliced_width(576, 0.25, 8)
        432
    """
    kept = int(round((1.0 - fraction) * width, 6))
    kept -= kept % max(multiple, 1)
    return max(kept, max(multiple, 1))
