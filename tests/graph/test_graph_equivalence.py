"""Pruning one group equals zeroing it, and removes exactly the zeroed parameters."""

from __future__ import annotations

import copy

import pytest
import torch
from cnn_models import BUILDERS, build
from torch import nn

from netslim.eval.size import count_params
from netslim.graph.build import build_graph

# Norms that average over channels: removing a channel changes the statistics of the others,
# so those groups are checked for shapes and counts but not for exact equality.
STATISTICAL = (nn.LayerNorm, nn.GroupNorm)


def _cases():
    for name in BUILDERS:
        model, inputs = build(name)
        for index, _ in enumerate(build_graph(model, inputs).groups()):
            yield name, index


@pytest.mark.parametrize(("arch", "index"), list(_cases()))
def test_pruning_a_group_equals_zeroing_it(arch, index):
    model, inputs = build(arch)
    graph = build_graph(model, inputs)
    group = graph.groups()[index]
    units = {group.units[0], group.units[-1]} if len(group.units) > 2 else {group.units[0]}

    zeroed_graph = copy.deepcopy(graph)
    zeroed = zeroed_graph.zero(units)
    pruned_graph = copy.deepcopy(graph)
    before = count_params(pruned_graph.model)
    cuts = pruned_graph.prune(units)

    assert cuts, "a group with units must produce cuts"
    assert zeroed > 0
    assert before - count_params(pruned_graph.model) == zeroed
    with torch.no_grad():
        expected = zeroed_graph.model(*inputs)
        got = pruned_graph.model(*inputs)
    assert got.shape == expected.shape
    statistical = any(isinstance(model.get_submodule(name), STATISTICAL) for name, _ in group.members)
    if not statistical:
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_every_architecture_has_prunable_groups():
    for name in BUILDERS:
        model, inputs = build(name)
        assert build_graph(model, inputs).groups(), name
