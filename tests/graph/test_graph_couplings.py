"""Known couplings of the test architectures, and the tracing error."""

from __future__ import annotations

import pytest
import torch
from cnn_models import Untraceable, build

from netslim.graph.build import build_graph
from netslim.graph.errors import GraphTraceError


def _group_of(graph, module: str):
    return next(g for g in graph.groups() if (module, "out") in g.members)


def test_residual_stream_couples_the_shortcut_and_every_block_of_a_stage():
    model, inputs = build("residual")
    graph = build_graph(model, inputs)
    group = _group_of(graph, "stage2.0.shortcut.0")
    members = set(group.members)
    assert ("stage2.0.body.2.0", "out") in members  # the block's last conv
    assert ("stage2.1.body.2.0", "out") in members  # the next block's last conv
    assert ("stage2.1.body.0.0", "in") in members
    assert ("fc", "in") in members
    assert len(group.units) == 16


def test_depthwise_conv_and_squeeze_excite_share_the_expanded_channels():
    model, inputs = build("mobile_se")
    members = set(_group_of(build_graph(model, inputs), "blocks.0.expand.0.0").members)
    for key in [("blocks.0.depthwise.0.0", "out"), ("blocks.0.se.reduce", "in"), ("blocks.0.se.expand", "out"),
                ("blocks.0.project.0", "in")]:
        assert key in members


def test_concatenation_offsets_and_grouped_conv_units():
    model, inputs = build("concat")
    graph = build_graph(model, inputs)
    roots = graph.roots()
    dense1_in = roots[("dense.1.conv", "in")]
    stem = set(_group_of(graph, "stem.0.0").units)
    growth = set(_group_of(graph, "dense.0.conv").units)
    assert set(dense1_in[:8].tolist()) == stem and set(dense1_in[8:].tolist()) == growth
    grouped = _group_of(graph, "inception.b2.0.0")
    assert len(grouped.units) == 2  # one unit per group of the groups=2 conv


def test_split_and_chunk_fix_their_channels_but_not_the_branches():
    model, inputs = build("split")
    names = {g.name for g in build_graph(model, inputs).groups()}
    assert "stem" not in names and "right" not in names
    assert "left.0" in names


def test_flatten_gives_each_channel_its_spatial_columns():
    model, inputs = build("flatten")
    graph = build_graph(model, inputs)
    columns = graph.roots()[("fc1", "in")]
    assert columns.numel() == 128
    assert len(set(columns[:16].tolist())) == 1 and columns[0] != columns[16]


def test_attention_heads_are_units_and_cutting_updates_the_head_count():
    model, inputs = build("vit")
    graph = build_graph(model, inputs)
    heads = _group_of(graph, "blocks.0.attn")
    assert len(heads.units) == 4
    graph.prune({heads.units[1]})
    assert model.blocks[0].attn.num_heads == 3 and model.blocks[0].attn.q.out_features == 24
    assert model(*inputs).shape == (2, 10)


def test_untraceable_model_names_the_operation():
    with pytest.raises(GraphTraceError, match=r"Untraceable.*(bool|control flow|iterat)"):
        build_graph(Untraceable(), (torch.randn(1, 3, 8, 8),))


def test_ignored_modules_keep_their_channels():
    model, inputs = build("flatten")
    graph = build_graph(model, inputs, ignore=("fc1",))
    names = {g.name for g in graph.groups()}
    assert "fc1" not in names and "features.3.0" not in names  # fc1 reads features.3 channels
    assert "features.0.0" in names
