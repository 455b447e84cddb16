"""Every registered family resolves all its paths on a tiny model of that family."""

import pytest
import torch
from torch import nn

from netslim.errors import UnsupportedModelError
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.models.registry import families, supported_model_types


def test_every_path_resolves(family_model):
    adapter = ModelAdapter.from_model(family_model)
    assert adapter.num_blocks == 2
    for i in range(adapter.num_blocks):
        linears = adapter.block_linears(i)
        assert list(linears) == [n for g in adapter.block_input_groups(i) for n in g]
        for name, module in linears.items():
            w = linear_weight(module)
            assert w.dim() == 2 and name.startswith(adapter.block_name(i))
        adapter.block_part(i, adapter.spec.attn_norm)
        adapter.block_part(i, adapter.spec.mlp_norm)
    assert adapter.embeddings and adapter.final_norm is not None and adapter.lm_head is not None
    assert adapter.num_heads % adapter.num_kv_heads == 0
    assert adapter.head_dim * adapter.num_heads >= adapter.hidden_size // 2


def test_input_groups_share_input_width(family_model):
    adapter = ModelAdapter.from_model(family_model)
    for group in adapter.block_input_groups(0):
        widths = {linear_weight(family_model.get_submodule(n)).shape[1] for n in group}
        assert len(widths) == 1, group


def test_linear_weight_is_a_writable_out_in_view(family_model):
    adapter = ModelAdapter.from_model(family_model)
    name, module = next(iter(adapter.block_linears(0).items()))
    x = torch.randn(3, linear_weight(module).shape[1])
    ref = module(x)
    linear_weight(module).zero_()
    bias = module.bias if getattr(module, "bias", None) is not None else torch.zeros(ref.shape[-1])
    torch.testing.assert_close(module(x), bias.expand_as(ref))


def test_unsupported_model_names_supported_families():
    class Fake(nn.Module):
        config = type("C", (), {"model_type": "mamba"})()

    with pytest.raises(UnsupportedModelError, match="mamba.*supported: .*llama"):
        ModelAdapter.from_model(Fake())
    with pytest.raises(UnsupportedModelError, match="no Hugging Face config"):
        ModelAdapter.from_model(nn.Linear(2, 2))


def test_registry_covers_the_required_families():
    assert {"llama", "mistral", "qwen2", "gemma3_text", "gpt2", "opt"} <= set(supported_model_types())
    assert len({f.name for f in families()}) == len(families())
