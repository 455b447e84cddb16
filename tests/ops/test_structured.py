"""Known answers for the structured-pruning math."""

import torch

from netslim.ops import structured as S
from netslim.ops.moments import Moments


def _stats(x: torch.Tensor) -> Moments:
    stats = Moments(x.shape[-1], mean=True, dtype=torch.float64)  # what the engine keeps for Stat.MOMENTS
    stats.add(x[: len(x) // 2])
    stats.add(x[len(x) // 2 :])
    return stats


def test_channel_stats_match_torch():
    x = torch.randn(50, 7) * torch.arange(1, 8) + 3
    stats = _stats(x)
    torch.testing.assert_close(stats.mean.float(), x.mean(0))
    torch.testing.assert_close(stats.variance.float(), x.var(0))
    torch.testing.assert_close(stats.norm.float(), x.norm(dim=0))


def test_fluctuation_ignores_constant_channels_and_wanda_does_not():
    x = torch.randn(100, 3)
    x[:, 1] = 5.0  # constant: no fluctuation, large norm
    stats = _stats(x)
    w = torch.ones(4, 3)
    assert S.fluctuation_scores(w, stats)[1] < 1e-6
    assert S.wanda_scores(w, stats).argmax() == 1


def test_magnitude_counts_output_columns_and_input_rows():
    w_out = torch.zeros(2, 3)
    w_out[:, 0] = 3.0
    w_in = torch.zeros(3, 5)
    w_in[2] = 4.0
    scores = S.magnitude_scores(w_out, [w_in])
    torch.testing.assert_close(scores, torch.tensor([18**0.5, 0.0, 80**0.5]))


def test_taylor_is_abs_of_summed_first_order_term():
    w_out, g_out = torch.ones(2, 3), torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, -2.0]])
    w_in, g_in = torch.ones(3, 4), torch.zeros(3, 4)
    torch.testing.assert_close(S.taylor_scores([(w_out, g_out, 1), (w_in, g_in, 0)]), torch.tensor([2.0, 2.0, 0.0]))


def test_compensation_bias_minimizes_constant_error():
    torch.manual_seed(0)
    x = torch.randn(400, 6) + torch.tensor([0.0, 2.0, -1.0, 0.5, 3.0, 0.0])
    w = torch.randn(5, 6)
    removed, keep = torch.tensor([1, 4]), torch.tensor([0, 2, 3, 5])
    stats = _stats(x)
    bias = S.compensation_bias(w, stats.mean, removed).float()
    y = x @ w.t()
    plain = (y - x[:, keep] @ w[:, keep].t()).square().mean()
    compensated = (y - x[:, keep] @ w[:, keep].t() - bias).square().mean()
    assert compensated < 0.5 * plain


def test_uniform_counts_hit_the_ratio():
    heads, neurons = S.uniform_counts(n_heads=3, head_cost=8, n_neurons=100, neuron_cost=1, ratio=0.3)
    assert heads == 1
    assert abs((heads * 8 + neurons) - 0.3 * (24 + 100)) <= 0.5
    # 20 parameters no unit can free (k/v in query mode): the MLP makes up for them
    heads, neurons = S.uniform_counts(n_heads=3, head_cost=8, n_neurons=100, neuron_cost=1, ratio=0.3, total=144)
    assert heads == 1 and abs((heads * 8 + neurons) - 0.3 * 144) <= 0.5


def test_global_allocation_follows_scores_costs_and_keeps_one():
    pools = {("a",): 3, ("b",): 3}
    cands = [S.Candidate(("a",), r, s, 10) for r, s in enumerate([-3.0, -2.0, -1.0])]
    cands += [S.Candidate(("b",), r, s, 10) for r, s in enumerate([-2.5, 0.0, 1.0])]
    # budget 30: a0 (-3), b0 (-2.5), a1 (-2); a2 would empty pool a
    assert S.global_allocation(cands, 30, pools) == {("a",): 2, ("b",): 1}
    assert S.global_allocation(cands, 45, pools) == {("a",): 2, ("b",): 2}


def test_standardize_and_helpers():
    z = S.standardize(torch.tensor([1.0, 2.0, 3.0, 10.0]))
    assert abs(float(z.mean())) < 1e-6 and abs(float(z.std()) - 1) < 1e-6
    torch.testing.assert_close(S.group_scores(torch.arange(6.0), 3), torch.tensor([1.0, 4.0]))
    assert S.lowest(torch.tensor([5.0, 1.0, 3.0, 0.0]), 2).tolist() == [1, 3]
    assert S.complement(5, torch.tensor([1, 3])).tolist() == [0, 2, 4]


def test_refit_is_the_least_squares_fit_of_the_output_on_the_kept_channels():
    torch.manual_seed(0)
    base = torch.randn(2000, 4)
    mix = torch.randn(4, 7)
    x = base @ mix + 0.3 * torch.randn(2000, 7) + torch.tensor([0.0, 2.0, -1.0, 0.5, 3.0, 0.0, 1.0])
    x = x.double()
    w = torch.randn(5, 7, dtype=torch.float64)
    removed, keep = torch.tensor([1, 4, 6]), torch.tensor([0, 2, 3, 5])
    kept, bias = S.refit_columns(w, x.t() @ x / len(x), x.mean(0), removed, damp=0.0)
    design = torch.cat([x[:, keep], torch.ones(len(x), 1, dtype=x.dtype)], 1)
    best = torch.linalg.lstsq(design, x @ w.t()).solution  # (kept + 1, out)
    torch.testing.assert_close(kept, best[:-1].t(), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(bias, best[-1], rtol=1e-6, atol=1e-8)
    # uncorrelated channels: the refit leaves the kept columns and gives the mean compensation
    mean = torch.full((7,), 1.5, dtype=torch.float64)
    kept, bias = S.refit_columns(w, torch.eye(7, dtype=torch.float64) + 1.5**2, mean, removed, damp=0.0)
    torch.testing.assert_close(kept, w[:, keep])
    torch.testing.assert_close(bias, S.compensation_bias(w, mean, removed))
