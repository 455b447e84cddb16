"""Magnitude and Wanda: exact sparsity, N:M validity, and the choice the Wanda paper predicts."""

import pytest
import torch
from torch import nn

import netslim
from netslim.engine.stats import InputStats, Stat
from netslim.methods.base import LayerView
from netslim.methods.magnitude import MagnitudeConfig, magnitude
from netslim.methods.wanda import WandaConfig, wanda
from netslim.models.adapter import ModelAdapter, linear_weight


def _view(layer: nn.Linear) -> LayerView:
    holder = nn.Module()
    holder.proj = layer
    return LayerView("proj", layer, 0, holder, "proj")


def _stats(x: torch.Tensor):
    acc = InputStats(x.shape[-1], frozenset({Stat.ACT_NORM}))
    acc.add(x)
    return acc.view()


def test_wanda_and_magnitude_choose_differently_where_activations_differ():
    # Column 0 has small weights but a huge input; column 1 has larger weights and tiny input.
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.data = torch.tensor([[0.5, 1.0]])
    x = torch.stack([torch.full((64,), 10.0), torch.full((64,), 0.1)], dim=1)
    mag, wan = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    mag.weight.data, wan.weight.data = layer.weight.data.clone(), layer.weight.data.clone()
    magnitude(_view(mag), None, MagnitudeConfig(ratio=0.5))
    wanda(_view(wan), _stats(x), WandaConfig(ratio=0.5))
    assert mag.weight.data.tolist() == [[0.0, 1.0]]  # keeps the larger weight
    assert wan.weight.data.tolist() == [[0.5, 0.0]]  # keeps the weight on the strong input
    # and Wanda's choice is the one with the smaller output error
    assert (x @ wan.weight.T - x @ layer.weight.T).norm() < (x @ mag.weight.T - x @ layer.weight.T).norm()


@pytest.mark.parametrize("method", ["wanda", "magnitude"])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_unstructured_sparsity_is_exact(llama_model, token_windows, method, sparsity):
    result = netslim.compress(llama_model, {"method": method, "ratio": sparsity, "compare": "row"}, token_windows, progress=False)
    adapter = ModelAdapter.from_model(llama_model)
    assert len(result.layers) == adapter.num_blocks * len(adapter.spec.linears())
    for record in result.layers:
        w = linear_weight(llama_model.get_submodule(record["name"]))
        per_row = (w == 0).sum(dim=1)
        assert (per_row == int(w.shape[1] * sparsity)).all(), record["name"]
        assert record["sparsity"] == pytest.approx(int(w.shape[1] * sparsity) / w.shape[1])


def test_magnitude_layer_scope_is_exact_per_layer(llama_model):
    netslim.compress(llama_model, netslim.MagnitudeConfig(ratio=0.6), progress=False)
    for name, module in ModelAdapter.from_model(llama_model).block_linears(1).items():
        w = linear_weight(module)
        assert int((w == 0).sum()) == int(w.numel() * 0.6), name


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
@pytest.mark.parametrize("method", ["wanda", "magnitude"])
def test_nm_every_group_holds_exactly_n(family_model, token_windows, method, pattern):
    n, m = map(int, pattern.split(":"))
    netslim.compress(family_model, {"method": method, "pattern": pattern}, token_windows, progress=False)
    for i in range(2):
        for name, module in ModelAdapter.from_model(family_model).block_linears(i).items():
            w = linear_weight(module)
            groups = (w != 0).view(w.shape[0], -1, m).sum(dim=2)
            # random weights are never exactly zero, so every group holds exactly n non-zeros
            assert (groups == n).all(), name


def test_ignore_leaves_matching_layers_dense(llama_model, token_windows):
    cfg = netslim.WandaConfig(ratio=0.5, ignore=("*.down_proj", "model.layers.0.*"))
    result = netslim.compress(llama_model, cfg, token_windows, progress=False)
    names = {r["name"] for r in result.layers}
    assert not any(n.endswith("down_proj") or n.startswith("model.layers.0.") for n in names)
    down = linear_weight(llama_model.model.layers[1].mlp.down_proj)
    assert int((down == 0).sum()) == 0
    assert linear_weight(llama_model.model.layers[1].mlp.up_proj).eq(0).float().mean() == pytest.approx(0.5)


def test_embeddings_and_head_stay_dense(llama_model, token_windows):
    netslim.compress(llama_model, netslim.WandaConfig(ratio=0.5), token_windows, progress=False)
    assert int((llama_model.model.embed_tokens.weight == 0).sum()) == 0
    assert int((llama_model.lm_head.weight == 0).sum()) == 0
