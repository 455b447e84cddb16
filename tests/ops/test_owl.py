"""OWL allocation math: outlier ratios and per-block sparsities."""

import pytest
import torch

from netslim.ops.owl import outlier_ratio, owl_sparsities


def test_outlier_ratio_known_answer():
    scores = [torch.tensor([[1.0, 1.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 31.0]])]
    assert outlier_ratio(scores, threshold=5.0) == pytest.approx(0.1)  # mean 4: only 31 exceeds 20
    assert outlier_ratio(scores, threshold=10.0) == 0.0


def test_two_blocks_spread_by_two_lambda():
    assert owl_sparsities([0.0, 1.0], 0.5, 0.08) == pytest.approx([0.58, 0.42])


@pytest.mark.parametrize("ratios", [[0.1, 0.2, 0.3, 0.9], [0.0, 0.0, 0.0, 1.0], [5.0, 1.0, 3.0, 2.0, 0.5]])
def test_mean_is_target_and_bounded_by_lambda(ratios):
    sparsities = owl_sparsities(ratios, 0.7, 0.08)
    assert sum(sparsities) / len(sparsities) == pytest.approx(0.7)
    assert all(0.62 - 1e-9 <= s <= 0.78 + 1e-9 for s in sparsities)
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    assert [sparsities[i] for i in order] == sorted(sparsities, reverse=True)  # more outliers, less pruning


def test_equal_ratios_give_uniform_sparsity():
    assert owl_sparsities([0.3, 0.3, 0.3], 0.5, 0.08) == [0.5, 0.5, 0.5]
