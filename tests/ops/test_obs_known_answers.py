"""Known answers for the OBS sweep (:mod:`netslim.ops.obs`) shared by SparseGPT and GPTQ.

Every expected value here is derived independently of the code under test:

- grids are written out by hand (``_rtn``) from the convention in :mod:`netslim.ops.quant`;
- ``H^-1`` comes from ``torch.linalg.inv`` and its factor ``U`` (``H^-1 = U^T U``, the
  convention of ``obs_sweep``) from ``torch.linalg.cholesky(..., upper=True)``;
- the sequential reference applies the textbook OBS step with an explicit inverse of the
  Hessian restricted to the columns not yet processed, ``inv(H[i:, i:])``, instead of rows of
  the Cholesky factor.
"""

from __future__ import annotations

import math

import pytest
import torch

from netslim.methods.gptq import gptq_quantize
from netslim.methods.sparsegpt import sparsegpt_prune
from netslim.ops.obs import MaskRule, QuantRule, obs_sweep


def _rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool) -> torch.Tensor:
    """Round-to-nearest on each group's min/max grid, written out by hand.

    Computed in ``w``'s own dtype (float32): the largest weight of a symmetric grid sits
    exactly half a step from two grid points, so the rounding tie must be broken in the
    precision the weights have.
    """
    maxq = 2**bits - 1
    out = torch.empty_like(w)
    width = w.shape[1] if group_size == -1 else group_size
    for r in range(w.shape[0]):
        for start in range(0, w.shape[1], width):
            g = w[r, start : start + width]
            low, high = g.min().clamp_max(0), g.max().clamp_min(0)
            if sym:
                high = torch.maximum(low.abs(), high)
                low = -high
            scale = (high - low) / maxq
            zero = (maxq + 1) // 2 if sym else torch.round(-low / scale)
            codes = torch.clamp(torch.round(g / scale) + zero, 0, maxq)
            out[r, start : start + width] = scale * (codes - zero)
    return out


def _upper(hessian: torch.Tensor) -> torch.Tensor:
    """``U`` with ``inv(H) = U^T U`` (upper triangular), from ``torch.linalg`` directly."""
    return torch.linalg.cholesky(torch.linalg.inv(hessian.double()), upper=True)


def _spd(n: int, seed: int) -> torch.Tensor:
    """A well-conditioned correlated Hessian ``2 X^T X / m`` (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * n, n, generator=g, dtype=torch.float64) @ (torch.eye(n, dtype=torch.float64)
                                                                   + 0.5 * torch.randn(n, n, generator=g, dtype=torch.float64))
    return 2 * x.T @ x / x.shape[0] + 0.1 * torch.eye(n, dtype=torch.float64)


def _weights(rows: int, cols: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


# (a) uncorrelated inputs: H = identity (or diagonal) means no weight may move ------------------

@pytest.mark.parametrize(("group_size", "sym", "block_size"), [(8, False, 16), (8, True, 8), (-1, False, 16), (-1, True, 128)])
def test_identity_hessian_gptq_sweep_is_plain_round_to_nearest(group_size, sym, block_size):
    w = _weights(6, 32, seed=1)
    work = w.clone()
    rule = QuantRule(w.clone(), 4, group_size, sym)
    loss = obs_sweep(work, torch.eye(32), rule, block_size)
    expected = _rtn(w, 4, group_size, sym)
    torch.testing.assert_close(work, expected, rtol=0, atol=1e-6)
    # U = I: every column's loss is (w - q)^2 / 2
    assert loss == pytest.approx(float((w.double() - expected.double()).square().sum() / 2), rel=1e-6)
    # the codes the rule reports reproduce the same values
    torch.testing.assert_close(rule.result(work).dequantize(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("block_size", [32, 8])
def test_identity_hessian_obs_pruning_is_magnitude_pruning_without_updates(block_size):
    w = _weights(4, 32, seed=2)
    work = w.clone()
    obs_sweep(work, torch.eye(32), MaskRule(0.5), block_size)
    for start in range(0, 32, block_size):  # each block loses its smallest half, over all rows together
        block, got = w[:, start : start + block_size], work[:, start : start + block_size]
        threshold = block.abs().flatten().sort().values[block.numel() // 2 - 1]
        keep = block.abs() > threshold
        assert int(keep.sum()) == block.numel() // 2
        torch.testing.assert_close(got, block * keep, rtol=0, atol=0)  # survivors untouched


def test_identity_hessian_nm_obs_pruning_is_nm_magnitude_pruning():
    w = _weights(5, 16, seed=3)
    work = w.clone()
    obs_sweep(work, torch.eye(16), MaskRule(0.5, nm=(2, 4)), 16)
    groups = w.view(5, 4, 4)
    order = groups.abs().argsort(dim=2, descending=True)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, order[:, :, :2], True).view(5, 16)
    torch.testing.assert_close(work, w * keep, rtol=0, atol=0)


def test_diagonal_hessian_prunes_by_w2_times_h_and_moves_nothing():
    # uncorrelated inputs of different strength: U_ii^2 = 1 / h_i, so the saliency is w^2 h
    w = torch.tensor([[1.0, 0.2, -0.5, 0.9], [-0.3, 2.0, 0.1, -1.5]])
    h = torch.tensor([0.01, 100.0, 4.0, 1.0])
    work = w.clone()
    loss = obs_sweep(work, torch.diag(h.rsqrt()), MaskRule(0.5), 4)
    saliency = w.square() * h  # [[0.01, 4, 1, 0.81], [0.0009, 400, 0.04, 2.25]]
    keep = saliency >= saliency.flatten().sort().values[4]
    assert keep.tolist() == [[False, True, True, False], [False, True, False, True]]
    assert work.tolist() == (w * keep).tolist()
    assert loss == pytest.approx(float(((w * ~keep).square() * h).sum() / 2), rel=1e-6)


def test_gptq_with_diagonal_hessian_and_act_order_equals_rtn():
    # a diagonal H gives no compensation, so act-order's permutation must only change the order
    w = _weights(8, 32, seed=4)
    h = torch.linspace(0.5, 3.0, 32)[torch.randperm(32, generator=torch.Generator().manual_seed(0))]
    for act_order in (False, True):
        result = gptq_quantize(w, torch.diag(h), bits=4, group_size=8, sym=False, act_order=act_order, damp=0.01)
        torch.testing.assert_close(result.qweight.dequantize(), _rtn(w, 4, 8, False), rtol=0, atol=1e-6)
        assert result.qweight.g_idx.tolist() == [i // 8 for i in range(32)]


def test_sparsegpt_with_diagonal_hessian_prunes_the_damped_saliency():
    w = _weights(4, 16, seed=5)
    h = torch.linspace(0.1, 4.0, 16)
    result = sparsegpt_prune(w, torch.diag(h), sparsity=0.5, damp=0.01)
    damped = h + 0.01 * h.mean()
    saliency = w.square() * damped
    keep = saliency > saliency.flatten().sort().values[w.numel() // 2 - 1]
    torch.testing.assert_close(result.weight, w * keep, rtol=0, atol=0)
    assert result.obs_loss == pytest.approx(float(((w * ~keep).square() * damped).sum() / 2), rel=1e-5)


# (b) two columns: the update of the remaining weight in closed form --------------------------

H2 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)


def test_two_column_pruning_update_is_the_closed_form():
    hinv = torch.linalg.inv(H2)  # [[1/1.36, -0.8/1.36], [-0.8/1.36, 2/1.36]]
    # row 0: column 0 is the least salient (w0^2 / Hinv00 vs w1^2 H11), so it is pruned;
    # row 1: column 1 is the least salient, so it is pruned and column 0 never moves.
    w = torch.tensor([[0.3, 1.0], [2.0, -0.4]])
    sal0, sal1 = w[:, 0].double() ** 2 / hinv[0, 0], w[:, 1].double() ** 2 * H2[1, 1]
    assert (sal0 < sal1).tolist() == [True, False]
    work = w.clone()
    loss = obs_sweep(work, _upper(H2).float(), MaskRule(0.5, nm=(1, 2)), 2)
    w0, w1 = w[0].double()
    row0 = [0.0, float(w1 - w0 * hinv[0, 1] / hinv[0, 0])]  # Hinv01 / Hinv00 = -0.8: 1.0 + 0.3 * 0.8
    assert row0[1] == pytest.approx(1.24)
    torch.testing.assert_close(work, torch.tensor([row0, [2.0, 0.0]]), rtol=0, atol=1e-6)
    expected_loss = float(w0**2 / (2 * hinv[0, 0]) + w[1, 1].double() ** 2 * H2[1, 1] / 2)
    assert loss == pytest.approx(expected_loss, rel=1e-6)


@pytest.mark.parametrize("group_size", [-1, 2])  # static grid, and the grid chosen as the sweep reaches it
def test_two_column_quantization_update_is_the_closed_form(group_size):
    hinv = torch.linalg.inv(H2)
    w = torch.tensor([[0.37, -0.81], [1.23, 0.52], [-0.66, 0.18]])
    work = w.clone()
    loss = obs_sweep(work, _upper(H2).float(), QuantRule(w.clone(), 3, group_size, False), 2)
    expected, expected_loss = torch.empty(3, 2, dtype=torch.float64), 0.0
    for r in range(3):
        # the grid of the row: min/max of the original pair (the sweep has not moved column 1 yet)
        low, high = min(float(w[r].min()), 0.0), max(float(w[r].max()), 0.0)
        scale = (high - low) / 7
        zero = round(-low / scale)
        w0, w1 = float(w[r, 0]), float(w[r, 1])
        q0 = scale * (min(max(round(w0 / scale) + zero, 0), 7) - zero)
        w1_updated = w1 - (w0 - q0) * float(hinv[0, 1] / hinv[0, 0])
        q1 = scale * (min(max(round(w1_updated / scale) + zero, 0), 7) - zero)
        expected[r] = torch.tensor([q0, q1])
        expected_loss += (w0 - q0) ** 2 / (2 * float(hinv[0, 0])) + (w1_updated - q1) ** 2 * float(H2[1, 1]) / 2
    torch.testing.assert_close(work.double(), expected, rtol=0, atol=1e-6)
    assert loss == pytest.approx(expected_loss, rel=1e-5)


# (c) the sequential OBS loss, with lazy block updates ----------------------------------------

def _round_quarter(col, local, block, hinv_diag):
    """A fixed column rule: round to multiples of 0.25."""
    return torch.round(block[:, local] * 4) / 4


def _reference_sweep(w: torch.Tensor, hessian: torch.Tensor, compress) -> tuple[torch.Tensor, float]:
    """Textbook sequential OBS: fix column i to ``compress(w_i)``, then move the free columns
    by ``-(w_i - q_i) * Hinv_F[i, F] / Hinv_F[i, i]`` with ``Hinv_F = inv(H[F, F])``, F = i.."""
    w = w.double().clone()
    loss = 0.0
    for i in range(w.shape[1]):
        hinv = torch.linalg.inv(hessian[i:, i:])
        q = compress(w[:, i])
        err = w[:, i] - q
        loss += float(err.square().sum() / (2 * hinv[0, 0]))
        w[:, i:] -= torch.outer(err / hinv[0, 0], hinv[0])
        w[:, i] = q
    return w, loss


@pytest.mark.parametrize("block_size", [5, 2])  # one block, and lazy updates across three blocks
def test_sweep_and_loss_match_sequential_obs_with_explicit_inverses(block_size):
    hessian = _spd(5, seed=6)
    w = _weights(3, 5, seed=7)
    work = w.double().clone()
    loss = obs_sweep(work, _upper(hessian), _round_quarter, block_size)
    expected, expected_loss = _reference_sweep(w, hessian, lambda v: torch.round(v * 4) / 4)
    torch.testing.assert_close(work, expected, rtol=0, atol=1e-9)
    assert loss == pytest.approx(expected_loss, rel=1e-9)
    # for a quadratic objective the OBS steps are exact: the losses add up to the total
    # 1/2 (W - Q) H (W - Q)^T of the final weights against the original ones
    delta = w.double() - work
    assert loss == pytest.approx(float(torch.einsum("ri,ij,rj->", delta, hessian, delta) / 2), rel=1e-9)


def test_three_column_loss_by_hand():
    # H = [[4, 2, 0], [2, 3, 1], [0, 1, 1]] (det 4), round to integers, one row w = [0.3, 0.4, 0.2].
    hessian = torch.tensor([[4.0, 2.0, 0.0], [2.0, 3.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.3, 0.4, 0.2]], dtype=torch.float64)
    # inv(H) = [[0.5, -0.5, 0.5], [-0.5, 1, -1], [0.5, -1, 2]]
    # column 0: q = 0, err 0.3, loss 0.3^2 / (2 * 0.5) = 0.09; the others move by
    #   -0.3 * [-0.5, 0.5] / 0.5 = [+0.3, -0.3]: w = [0, 0.7, -0.1]
    # column 1: inv(H[1:, 1:]) = inv([[3, 1], [1, 1]]) = [[0.5, -0.5], [-0.5, 1.5]];
    #   q = 1, err -0.3, loss 0.09 / (2 * 0.5) = 0.09; w2 moves by 0.3 * (-0.5) / 0.5: w2 = -0.4
    # column 2: inv(H[2:, 2:]) = [[1]]; q = 0, err -0.4, loss 0.16 / 2 = 0.08
    # total 0.26 = (W - Q) H (W - Q)^T / 2 with W - Q = [0.3, -0.6, 0.2]: (0.6 - 0.08) / 2
    work = w.clone()
    loss = obs_sweep(work, _upper(hessian), lambda col, local, block, d: torch.round(block[:, local]), 3)
    assert work.tolist() == [[0.0, 1.0, 0.0]]
    assert loss == pytest.approx(0.26, rel=1e-12)


def test_upper_factor_convention_is_the_one_the_sweep_assumes():
    # the first row of U carries exactly the closed-form update ratio Hinv[0, j] / Hinv[0, 0]
    hessian = _spd(4, seed=8)
    hinv, upper = torch.linalg.inv(hessian), _upper(hessian)
    torch.testing.assert_close(upper[0] / upper[0, 0], hinv[0] / hinv[0, 0])
    assert math.isclose(float(upper[0, 0] ** 2), float(hinv[0, 0]), rel_tol=1e-12)
