"""prune_channels: targets, allocation, rounding, criteria, plans, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers as T
from cnn_models import build

from netslim import ChannelPruneConfig, prune_channels
from netslim.errors import ConfigError
from netslim.eval.flops import count_macs
from netslim.eval.size import count_params
from netslim.graph.build import build_graph
from netslim.graph.importance import Importance, group_scores
from netslim.graph.plan import SlimPlan, load_pruned, save_pruned


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_flop_target_is_reached_and_the_model_still_runs(allocation):
    model, inputs = build("mobile_se")
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.4, measure="macs", allocation=allocation))
    removed = 1 - result.after["macs"] / result.before["macs"]
    assert 0.4 <= removed < 0.6
    assert result.after["macs"] == count_macs(model, inputs)
    assert model(*inputs).shape == (2, 10)


def test_param_target_and_steps():
    model, inputs = build("residual")
    result = prune_channels(model, inputs, {"ratio": 0.3, "steps": 2})
    assert 0.3 <= 1 - result.after["params"] / result.before["params"] < 0.5
    assert result.after["params"] == count_params(model)


def test_latency_is_measured_before_and_after_in_eval_mode():
    model, inputs = build("residual")
    model.train()
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs"), latency=True)
    assert result.before["latency_ms"] > 0 and result.after["latency_ms"] > 0
    assert not model.training  # timed in eval mode, as netslim.eval.latency times every model


def test_round_to_keeps_multiples():
    model, inputs = build("residual")
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs", round_to=4))
    assert all(g["kept"] % 4 == 0 for g in result.groups)
    assert any(g["kept"] < g["units"] for g in result.groups)


def test_ignored_layer_is_untouched():
    model, inputs = build("flatten")
    prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs", ignore=("fc1",)))
    assert model.fc1.weight.shape == (24, 128)
    assert model.features[0][0].out_channels < 6


def test_bn_scale_removes_the_channel_with_the_smallest_gamma():
    model, inputs = build("flatten")
    with torch.no_grad():
        model.features[0][1].weight[3] = 1e-4
    graph = build_graph(model, inputs)
    group = next(g for g in graph.groups() if g.name == "features.0.0")
    scores = group_scores(graph, group, Importance.BN_SCALE)
    assert int(scores.argmin()) == 3


@pytest.mark.parametrize("criterion", ["l1", "l2", "random"])
def test_l1_l2_random_give_one_score_per_unit(criterion):
    model, inputs = build("concat")
    graph = build_graph(model, inputs)
    for group in graph.groups():
        scores = group_scores(graph, group, Importance(criterion))
        assert scores.shape == (len(group.units),) and bool((scores >= 0).all())


def test_l1_score_is_the_sum_of_absolute_weights():
    model, inputs = build("flatten")
    graph = build_graph(model, inputs)
    group = next(g for g in graph.groups() if g.name == "fc1")
    expected = model.fc1.weight.abs().sum(1) + model.fc1.bias.abs() + model.fc2.weight.abs().sum(0)
    torch.testing.assert_close(group_scores(graph, group, Importance.L1), expected.detach())


def test_taylor_needs_a_loss_and_uses_gradients():
    model, inputs = build("flatten")
    with pytest.raises(ConfigError, match="loss_fn"):
        prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs", importance="taylor"))
    result = prune_channels(
        model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs", importance="taylor"),
        loss_fn=lambda m: m(*inputs).pow(2).mean(),
    )
    assert result.after["macs"] < result.before["macs"]


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="measure"):
        prune_channels(*build("flatten"), {"ratio": 0.3, "measure": "flops"})
    with pytest.raises(ConfigError, match="'target_flops' is now spelled ratio"):
        prune_channels(*build("flatten"), {"target_flops": 0.3})
    with pytest.raises(ConfigError, match="imporance"):
        prune_channels(*build("flatten"), {"ratio": 0.3, "imporance": "l1"})


def test_example_inputs_a_bare_tensor_is_accepted_and_a_wrong_one_is_a_config_error():
    model, inputs = build("residual")
    result = prune_channels(model, inputs[0], {"ratio": 0.3, "measure": "macs"})
    assert result.after["macs"] <= 0.7 * result.before["macs"]
    model, _ = build("residual")
    with pytest.raises(ConfigError, match="does not run on example_inputs"):
        prune_channels(model, (torch.randn(1, 5, 8, 8),), {"ratio": 0.3, "measure": "macs"})
    with pytest.raises(ConfigError, match="tuple"):
        prune_channels(model, {"x": torch.randn(1, 3, 8, 8)}, {"ratio": 0.3, "measure": "macs"})


def test_plan_round_trip_rebuilds_the_pruned_model(tmp_path):
    model, inputs = build("concat")
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, measure="macs"))
    plan = SlimPlan.from_json(result.plan.to_json())
    assert plan == result.plan
    save_pruned(model, result.plan, tmp_path / "slim")
    fresh, _ = build("concat", seed=1)
    loaded = load_pruned(fresh, tmp_path / "slim")
    torch.testing.assert_close(loaded(*inputs), model(*inputs))


def _tiny_bert():
    torch.manual_seed(0)
    config = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          vocab_size=100, max_position_embeddings=32)
    return T.BertModel(config).eval(), (torch.randint(0, 100, (2, 8)),)


def test_bert_head_pruning_equals_zeroing_the_head():
    model, inputs = _tiny_bert()
    graph = build_graph(model, inputs)
    heads = next(g for g in graph.groups() if g.name.endswith("attention.self"))
    zeroed = copy.deepcopy(graph)
    zeroed.zero({heads.units[2]})
    graph.prune({heads.units[2]})
    attn = model.encoder.layer[0].attention.self
    assert attn.num_attention_heads == 3 and attn.query.out_features == 24
    torch.testing.assert_close(model(*inputs).last_hidden_state, zeroed.model(*inputs).last_hidden_state)


def test_bert_parameter_target():
    model, inputs = _tiny_bert()
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.2, allocation="global"))
    assert 1 - result.after["params"] / result.before["params"] >= 0.2
    assert model(*inputs).last_hidden_state.shape == (2, 8, 32)
