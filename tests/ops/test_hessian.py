"""Hessian preparation: dead inputs, dampening, the inverse factor and its fallback chain."""

import torch

from netslim.ops.hessian import HessianFallback, dampen, dead_inputs, fix_dead_inputs, inverse_cholesky


def _spd(n: int = 16, seed: int = 0) -> torch.Tensor:
    x = torch.randn(4 * n, n, generator=torch.Generator().manual_seed(seed))
    return 2 * x.T @ x / x.shape[0]


def test_dead_inputs_get_unit_diagonal_and_zero_weight_columns():
    h = _spd()
    h[3, :] = 0
    h[:, 3] = 0
    weight = torch.ones(5, 16)
    fixed = fix_dead_inputs(h, weight)
    assert dead_inputs(h).nonzero().flatten().tolist() == [3]
    assert fixed[3, 3] == 1 and h[3, 3] == 0  # the input is not modified
    assert weight[:, 3].abs().sum() == 0 and weight[:, 2].abs().sum() == 5


def test_dampen_adds_percent_of_mean_diagonal():
    h = torch.diag(torch.tensor([1.0, 3.0]))
    assert torch.equal(dampen(h, 0.5), torch.diag(torch.tensor([2.0, 4.0])))


def test_factor_of_positive_definite_hessian_is_exact():
    h = _spd()
    factor = inverse_cholesky(h, 0.01)
    assert factor.fallback is HessianFallback.NONE and factor.damp == 0.01
    assert torch.allclose(factor.upper, torch.triu(factor.upper))
    expected = torch.linalg.inv(dampen(h, 0.01))
    assert torch.allclose(factor.upper.T @ factor.upper, expected, atol=1e-4)


def test_rank_deficient_hessian_takes_the_damping_fallback():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))  # rank 8 < 32
    x[:, 1] = x[:, 0]  # duplicated channel
    factor = inverse_cholesky(2 * x.T @ x / 8, percent=0.0)
    assert factor.fallback is HessianFallback.DAMPING
    assert factor.damp == 0.1 and torch.isfinite(factor.upper).all()


def test_non_finite_hessian_falls_back_to_the_diagonal():
    h = _spd()
    h[0, 1] = float("nan")
    factor = inverse_cholesky(h)
    assert factor.fallback is HessianFallback.DIAGONAL
    assert torch.isfinite(factor.upper).all()
    assert torch.equal(factor.upper, torch.diag(torch.diagonal(factor.upper)))


def test_indefinite_hessian_never_raises():
    h = -torch.eye(6)  # no damping of the mean diagonal can fix a negative mean
    factor = inverse_cholesky(h)
    assert factor.fallback is HessianFallback.DIAGONAL and torch.isfinite(factor.upper).all()
