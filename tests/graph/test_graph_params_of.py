"""``params_of="prunable"``: the denominator of a ``params`` ratio without unprunable parts."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from torch import nn

from netslim import ChannelPruneConfig, prune_channels
from netslim.errors import ConfigError
from netslim.eval.size import count_params
from netslim.graph.api import prunable_params
from netslim.graph.build import build_graph


class _ConvNet(nn.Module):
    """conv1 (3->4, 1x1, no bias) -> conv2 (4->5, 1x1) -> pool -> fc (5->2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1, bias=False)
        self.conv2 = nn.Conv2d(4, 5, 1)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _tiny_bert():
    torch.manual_seed(0)
    config = T.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          vocab_size=100, max_position_embeddings=32)
    return T.BertModel(config).eval(), (torch.randint(0, 100, (2, 8)),)


def test_prunable_params_of_a_cnn_and_with_ignore():
    inputs = (torch.randn(1, 3, 4, 4),)
    assert prunable_params(build_graph(_ConvNet(), inputs)) == 12 + 25 + 12 == count_params(_ConvNet())
    # ignoring fc fixes the conv2 channels it reads: only conv1 -> conv2 stays prunable
    assert prunable_params(build_graph(_ConvNet(), inputs, ("fc",))) == 12 + 25


def test_prunable_params_of_bert_are_its_attention_and_ffn_linears():
    model, inputs = _tiny_bert()
    per_layer = 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32)  # q, k, v, attn out; FFN in, out
    assert prunable_params(build_graph(model, inputs)) == 2 * per_layer == 16832
    assert count_params(model) > 2 * per_layer  # embeddings, norms and pooler are not prunable


def test_target_params_of_prunable_removes_that_share_of_the_prunable_params():
    model, inputs = _tiny_bert()
    result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.3, params_of="prunable"))
    assert result.before["prunable_params"] == 16832
    removed = result.before["params"] - result.after["params"]
    # units are a head (1048 params per layer) or an FFN neuron (65): the overshoot is small
    assert 0.3 <= removed / 16832 < 0.31
    whole, _ = _tiny_bert()
    by_model = prune_channels(whole, inputs, ChannelPruneConfig(ratio=0.3, allocation="global"))
    assert "prunable_params" not in by_model.before
    assert by_model.before["params"] - by_model.after["params"] >= 0.3 * by_model.before["params"] > removed


def test_params_of_prunable_needs_a_parameter_target():
    model, inputs = _tiny_bert()
    with pytest.raises(ConfigError, match="params_of"):
        prune_channels(model, inputs, {"ratio": 0.3, "measure": "macs", "params_of": "prunable"})
    with pytest.raises(ConfigError, match="params_of"):
        prune_channels(model, inputs, {"ratio": 0.3, "params_of": "encoder"})


def test_unreachable_prunable_target_says_how_much_of_the_prunable_params_can_go():
    model, inputs = _tiny_bert()
    # per layer at most 3 of 4 heads (3 x 1048) and 57 of 64 neurons (57 x 65): 13698 / 16832
    with pytest.raises(ConfigError, match=r"at most 81\.4% of prunable params"):
        prune_channels(model, inputs, {"ratio": 0.95, "params_of": "prunable", "max_group_ratio": 0.9})
