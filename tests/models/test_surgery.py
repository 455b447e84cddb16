"""Layer surgery: removing heads, neurons and blocks equals masking them in the dense model."""

import copy

import pytest
import torch

from tiny_models import tiny_model
from netslim.errors import ConfigError, UnsupportedModelError
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter
from netslim.ops.structured import complement

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
LLAMA_LIKE = ["llama", "qwen2", "mistral", "gemma3_text"]


def _masked(model, block, heads=(), neurons=()):
    """A copy of ``model`` whose ``heads`` / ``neurons`` of ``block`` output zero."""
    masked = copy.deepcopy(model)
    adapter = ModelAdapter.from_model(masked)
    cols = surgery.head_rows(torch.tensor(list(heads), dtype=torch.long), adapter.head_dim)
    adapter.block_part(block, adapter.spec.attn_out).weight.data[:, cols] = 0
    adapter.block_part(block, adapter.spec.mlp_out).weight.data[:, list(neurons)] = 0
    return masked


@pytest.mark.parametrize("family", LLAMA_LIKE)
def test_removing_a_kv_group_and_neurons_equals_masking(family):
    model = tiny_model(family)
    reference = _masked(model, 1, heads=[2, 3], neurons=[0, 5, 77])
    adapter = ModelAdapter.from_model(model)
    surgery.prune_heads(adapter, 1, keep_q=torch.tensor([0, 1]), keep_kv=torch.tensor([0]))
    surgery.prune_neurons(adapter, 1, complement(128, torch.tensor([0, 5, 77])))
    assert surgery.head_counts(adapter, 1) == (2, 1) and surgery.intermediate_size(adapter, 1) == 125
    assert adapter.block_part(1, "self_attn").num_key_value_groups == 2
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=1e-5, rtol=1e-5)


def test_removing_query_heads_evenly_within_groups_equals_masking():
    model = tiny_model("llama")  # 4 heads, 2 kv heads: groups {0, 1} and {2, 3}
    reference = _masked(model, 0, heads=[1, 2])
    adapter = ModelAdapter.from_model(model)
    surgery.prune_heads(adapter, 0, keep_q=torch.tensor([0, 3]), keep_kv=torch.tensor([0, 1]))
    assert adapter.block_part(0, "self_attn").num_key_value_groups == 1
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=1e-5, rtol=1e-5)


def test_opt_heads_and_neurons():
    model = tiny_model("opt")
    reference = _masked(model, 0, heads=[1], neurons=[3])
    adapter = ModelAdapter.from_model(model)
    surgery.prune_heads(adapter, 0, keep_q=torch.tensor([0, 2, 3]), keep_kv=torch.tensor([0, 2, 3]))
    surgery.prune_neurons(adapter, 0, complement(128, torch.tensor([3])))
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=1e-5, rtol=1e-5)


def test_uneven_groups_and_fused_qkv_are_rejected():
    adapter = ModelAdapter.from_model(tiny_model("llama"))
    with pytest.raises(ConfigError):
        surgery.prune_heads(adapter, 0, keep_q=torch.tensor([0, 1, 2]), keep_kv=torch.tensor([0, 1]))
    with pytest.raises(UnsupportedModelError):
        surgery.check_width_supported(ModelAdapter.from_model(tiny_model("gpt2")))


def test_add_bias_creates_one():
    linear = torch.nn.Linear(3, 2, bias=False)
    surgery.add_bias(linear, torch.tensor([1.0, 2.0]))
    surgery.add_bias(linear, torch.tensor([1.0, 1.0]))
    assert linear.bias.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_remove_blocks_renumbers_and_generates(family):
    model = tiny_model(family)
    adapter = ModelAdapter.from_model(model)
    types = list(getattr(model.config, "layer_types", None) or [])
    surgery.remove_blocks(adapter, [0])
    assert adapter.num_blocks == 1 and model.config.num_hidden_layers == 1
    assert adapter.block_part(0, "self_attn").layer_idx == 0
    if types:
        assert model.config.layer_types == types[1:]
    out = model.generate(IDS[:1], max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 16)
    with pytest.raises(ConfigError):
        surgery.remove_blocks(adapter, [0])


def test_sync_config_only_when_uniform():
    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    surgery.prune_neurons(adapter, 0, torch.arange(100))
    assert not surgery.sync_config(adapter)
    surgery.prune_neurons(adapter, 1, torch.arange(100))
    assert surgery.sync_config(adapter) and model.config.intermediate_size == 100
