"""Known-answer tests of the pruning masks."""

import pytest
import torch

from netslim.errors import ConfigError
from netslim.ops.masks import layer_mask, nm_mask, parse_pattern, row_mask


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.7, 0.95])
def test_row_mask_prunes_exactly_per_row(sparsity):
    scores = torch.randn(16, 40)
    keep = row_mask(scores, sparsity)
    pruned = int(40 * sparsity)
    assert (keep.logical_not().sum(dim=1) == pruned).all()
    # the pruned entries are the lowest of their row
    for r in range(16):
        assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


def test_layer_mask_prunes_exactly_per_layer_and_rows_differ():
    scores = torch.randn(16, 40)
    scores[0] += 10  # row 0 holds the largest scores: layer-wise pruning keeps all of it
    keep = layer_mask(scores, 0.5)
    assert int((~keep).sum()) == 16 * 40 // 2
    assert keep[0].all()
    assert scores[~keep].max() <= scores[keep].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_n_of_every_m(n, m):
    scores = torch.randn(8, 64)
    keep = nm_mask(scores, n, m).view(8, 64 // m, m)
    assert (keep.sum(dim=2) == n).all()
    grouped = scores.view(8, 64 // m, m)
    kept_min = grouped.masked_fill(~keep, float("inf")).min(dim=2).values
    pruned_max = grouped.masked_fill(keep, float("-inf")).max(dim=2).values
    assert (pruned_max <= kept_min).all()


def test_nm_mask_needs_divisible_width():
    with pytest.raises(ConfigError, match="divisible by 4"):
        nm_mask(torch.randn(2, 6), 2, 4)


@pytest.mark.parametrize("bad", ["4:2", "2:2", "0:4", "2-4", "two:four", "sparse"])
def test_bad_patterns_are_rejected(bad):
    with pytest.raises(ConfigError, match="N:M"):
        parse_pattern(bad)


def test_patterns_parse():
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4)


@pytest.mark.parametrize("mask_fn", [row_mask, layer_mask])
def test_masks_equal_a_stable_sort_with_ties_pruned_by_lower_index(mask_fn):
    scores = torch.randint(0, 5, (12, 64)).float()  # many ties
    sparsity = 0.5
    if mask_fn is row_mask:
        order = torch.sort(scores, dim=1, stable=True).indices[:, : int(64 * sparsity)]
        expected = torch.ones_like(scores, dtype=torch.bool).scatter(1, order, False)
    else:
        order = torch.sort(scores.flatten(), stable=True).indices[: int(scores.numel() * sparsity)]
        expected = torch.ones(scores.numel(), dtype=torch.bool).scatter(0, order, False).view_as(scores)
    assert torch.equal(mask_fn(scores, sparsity), expected)
