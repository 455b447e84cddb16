"""Low-rank math: exact reconstruction, the whitening identity, fallbacks, eigen-space fits."""

import pytest
import torch

from netslim.ops.hessian import HessianFallback
from netslim.ops.lowrank import (
    asvd_scale,
    cholesky_with_fallback,
    diagonal_factors,
    eigen_factors,
    max_useful_rank,
    svd_factors,
    whitened_factors,
)


def _data(out=24, inp=16, tokens=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    # correlated activations with uneven channel scales, as in real LLM inputs
    x = torch.randn(tokens, inp, generator=g) @ torch.randn(inp, inp, generator=g) * torch.linspace(0.1, 5, inp)
    return w.double(), x.double()


def _out_error(w, approx, x):
    return float(((w - approx) @ x.t()).square().sum())


def test_full_rank_reproduces_the_weight_exactly_for_every_scaling():
    w, x = _data()
    full = min(w.shape)
    whitening = cholesky_with_fallback(x.t() @ x, damping=0.0)
    for f in (
        svd_factors(w, full),
        diagonal_factors(w, full, asvd_scale(x.abs().mean(0), 0.5)),
        whitened_factors(w, full, whitening),
    ):
        assert torch.allclose(f.up @ f.down, w, atol=1e-8)
        assert f.dropped_energy() == pytest.approx(0.0, abs=1e-12)


def test_whitened_truncation_error_equals_the_dropped_singular_values():
    w, x = _data()
    whitening = cholesky_with_fallback(x.t() @ x, damping=0.0)
    for rank in (1, 5, 10):
        f = whitened_factors(w, rank, whitening)
        error = _out_error(w, f.up @ f.down, x)
        assert error == pytest.approx(f.dropped_energy(), rel=1e-6)


def test_whitened_truncation_beats_plain_svd_on_the_data_at_equal_rank():
    w, x = _data()
    whitening = cholesky_with_fallback(x.t() @ x, damping=0.0)
    for rank in (2, 6, 12):
        white = whitened_factors(w, rank, whitening)
        plain = svd_factors(w, rank)
        assert _out_error(w, white.up @ white.down, x) < _out_error(w, plain.up @ plain.down, x)


def test_plain_svd_spectrum_is_the_weight_error():
    w, _ = _data()
    f = svd_factors(w, 4)
    assert float((w - f.up @ f.down).square().sum()) == pytest.approx(f.dropped_energy(), rel=1e-6)


def test_cholesky_records_damping_on_a_singular_gram_and_handles_dead_channels():
    _, x = _data(tokens=5)  # 5 tokens, 16 channels: rank 5, not positive definite
    gram = (x.t() @ x).float()
    gram[3, :] = gram[:, 3] = 0.0  # a channel that never fires
    w = cholesky_with_fallback(gram, damping=0.0)
    assert w.fallback is not HessianFallback.NONE and w.damping > 0
    assert torch.isfinite(w.factor).all()
    assert torch.allclose(w.factor, torch.tril(w.factor))


def test_cholesky_of_a_well_conditioned_gram_needs_no_fallback():
    _, x = _data(tokens=400)
    w = cholesky_with_fallback(x.t() @ x, damping=0.0)
    assert (w.fallback, w.damping, w.factor.dtype) == (HessianFallback.NONE, 0.0, torch.float32)


def test_cholesky_of_nan_statistics_falls_back_to_the_diagonal():
    gram = torch.diag(torch.tensor([4.0, 9.0, 1.0, 1.0]))
    gram[1, 0] = float("nan")
    w = cholesky_with_fallback(gram, damping=0.0)
    assert w.fallback is HessianFallback.DIAGONAL
    assert torch.isfinite(w.factor).all() and torch.count_nonzero(w.factor - torch.diag(torch.diagonal(w.factor))) == 0


def test_eigen_factors_fit_the_error_on_the_data_better_than_plain_svd():
    w, x = _data()
    pruned = w * (torch.rand(w.shape, generator=torch.Generator().manual_seed(1)) > 0.5)
    error = w - pruned
    gram = x.t() @ x
    full = eigen_factors(error, min(w.shape), gram, eps=1e-12)
    assert _out_error(error, full.up @ full.down, x) == pytest.approx(0.0, abs=1e-6)
    for rank in (2, 4, 8):
        eig = eigen_factors(error, rank, gram)
        plain = svd_factors(error, rank)
        assert _out_error(error, eig.up @ eig.down, x) < _out_error(error, plain.up @ plain.down, x)
        assert _out_error(error, eig.up @ eig.down, x) < _out_error(error, torch.zeros_like(error), x)


def test_max_useful_rank_is_the_last_rank_smaller_than_dense():
    for out, inp in ((64, 64), (576, 1536), (7, 3)):
        r = max_useful_rank(out, inp)
        assert r * (out + inp) < out * inp <= (r + 1) * (out + inp)


def test_rank_zero_gives_the_spectrum_alone():
    w, x = _data()
    whitening = cholesky_with_fallback(x.t() @ x, damping=0.0)
    spectrum_only = whitened_factors(w, 0, whitening)
    assert spectrum_only.rank == 0
    assert torch.allclose(spectrum_only.spectrum, whitened_factors(w, 3, whitening).spectrum, rtol=1e-5)
