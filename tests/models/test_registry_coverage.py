"""Every registered family has a tiny model, and the adapter and the engine work on each.

Parametrized over ``supported_model_types()`` (the registry), not over a hand-kept list: a
family registered without a tiny config in ``tests/tiny_models.py`` fails here.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_CONFIGS, TINY_MOE_CONFIGS, tiny_model
from torch import nn

import netslim
from netslim.export.save import round_for_storage
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.models.registry import family_for_model_type, supported_model_types
from netslim.models.spec import NormKind, stores_transposed
from netslim.nn.quantized import QuantizedLinear

MODEL_TYPES = supported_model_types()
ALL_CONFIGS = {**TINY_CONFIGS, **TINY_MOE_CONFIGS}
IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(7))


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _tiny(model_type: str) -> nn.Module:
    if model_type not in ALL_CONFIGS:
        pytest.fail(f"model type '{model_type}' is registered but tests/tiny_models.py has no tiny config for it")
    return tiny_model(model_type)


def test_tiny_configs_cover_exactly_the_registered_model_types():
    assert sorted(ALL_CONFIGS) == MODEL_TYPES
    for key, build in ALL_CONFIGS.items():
        assert build().model_type == key, key


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_tiny_model_is_tiny_and_exercises_the_family(model_type):
    model = _tiny(model_type)
    adapter = ModelAdapter.from_model(model)
    config = model.config
    assert adapter.hidden_size == 64 and adapter.num_blocks == 2
    assert model.get_input_embeddings().num_embeddings == 128
    assert getattr(config, "max_position_embeddings", getattr(config, "n_positions", None)) == 128
    if adapter.spec.num_kv_heads_attr is not None:  # the family has grouped-query attention: use it
        assert adapter.num_kv_heads < adapter.num_heads, "the tiny config should use GQA"
    assert sum(p.numel() for p in model.parameters()) < 200_000


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_adapter_resolves_every_part_with_consistent_shapes(model_type):
    model = _tiny(model_type)
    adapter = ModelAdapter.from_model(model)
    spec = adapter.spec
    assert spec is family_for_model_type(model_type) and model_type in spec.model_types
    assert isinstance(adapter.blocks, nn.ModuleList) and adapter.num_blocks == model.config.num_hidden_layers
    hidden, heads, kv, head_dim = adapter.hidden_size, adapter.num_heads, adapter.num_kv_heads, adapter.head_dim
    assert heads == 4 and heads % kv == 0
    assert kv == (2 if spec.num_kv_heads_attr else 4)
    assert head_dim == 16
    config = model.config
    intermediate = getattr(config, spec.intermediate_attr, None) or 4 * hidden  # GPT-2: n_inner=None
    for i in range(adapter.num_blocks):
        linears = adapter.block_linears(i)
        groups = adapter.block_input_groups(i)
        stages = adapter.block_stages(i)
        assert list(linears) == [n for g in groups for n in g] == [n for s in stages for g in s for n in g]
        assert len(stages) == 4 and len(linears) == len(spec.linears(adapter.num_experts))
        shapes = {n: tuple(linear_weight(m).shape) for n, m in linears.items()}  # (out, in)
        for group in groups:
            assert len({shapes[n][1] for n in group}) == 1, group  # one input per group
        for module in linears.values():
            assert stores_transposed(module) == spec.transposed_weights
        attn_in = [shapes[n] for n in groups[0]]
        if spec.fused_qkv:
            assert attn_in == [(3 * heads * head_dim, hidden)]
        else:
            assert attn_in == [(heads * head_dim, hidden), (kv * head_dim, hidden), (kv * head_dim, hidden)]
        assert stages[1] == [groups[1]] and [shapes[n] for n in groups[1]] == [(hidden, heads * head_dim)]
        mlp_in, mlp_out = stages[2], stages[3]  # the dense (or shared) MLP, then each routed expert
        assert len(mlp_in) == len(mlp_out) == bool(spec.mlp_in) + adapter.num_experts
        expert = getattr(config, spec.experts.intermediate_attr) if spec.experts else None
        for group, out in zip(mlp_in, mlp_out):
            width, count = (expert, 2) if ".mlp.experts." in group[0] else (intermediate, len(spec.mlp_in))
            assert [shapes[n] for n in group] == [(width, hidden)] * count
            assert [shapes[n] for n in out] == [(hidden, width)]
        for path in (spec.attn_norm, spec.mlp_norm, spec.post_attn_norm, spec.post_mlp_norm):
            if path is not None:
                assert adapter.block_part(i, path).weight.shape == (hidden,), path
    embeddings = adapter.embeddings
    assert len(embeddings) == len(spec.embeddings) and embeddings[0] is model.get_input_embeddings()
    assert adapter.final_norm.weight.shape == (hidden,)
    assert adapter.lm_head is model.get_output_embeddings()
    assert tuple(linear_weight(adapter.lm_head).shape) == (128, hidden)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_norm_kind_and_weight_offset_match_the_real_modules(model_type):
    # weight = 1 - offset makes the effective scale 1, so each norm must compute the plain
    # normalization of its kind; a wrong kind or offset in the spec shows up here
    model = _tiny(model_type)
    adapter = ModelAdapter.from_model(model)
    spec = adapter.spec
    x = torch.randn(3, 5, adapter.hidden_size, generator=torch.Generator().manual_seed(1))
    if spec.norm_kind == NormKind.RMSNORM:
        expected = x / x.square().mean(-1, keepdim=True).add(1e-6).sqrt()
    else:
        expected = (x - x.mean(-1, keepdim=True)) / x.var(-1, unbiased=False, keepdim=True).add(1e-5).sqrt()
    norms = [adapter.final_norm] + [adapter.block_part(i, p) for i in range(adapter.num_blocks)
                                    for p in (spec.attn_norm, spec.mlp_norm, spec.post_attn_norm, spec.post_mlp_norm) if p]
    with torch.no_grad():
        for norm in norms:
            norm.weight.fill_(1.0 - spec.norm_weight_offset)
            if getattr(norm, "bias", None) is not None:
                norm.bias.zero_()
            torch.testing.assert_close(norm(x), expected, rtol=1e-4, atol=1e-4)


def _save_and_reload(result, tmp_path) -> tuple[torch.Tensor, nn.Module]:
    round_for_storage(result.model)  # the default value dtype, applied in memory as a job does
    expected = _logits(result.model)
    netslim.save(result, tmp_path / "out")
    loaded = netslim.load(tmp_path / "out").model
    assert torch.equal(_logits(loaded), expected)
    return expected, loaded


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_wanda_prunes_exactly_half_of_every_row_and_round_trips(model_type, token_windows, tmp_path):
    model = _tiny(model_type)
    adapter = ModelAdapter.from_model(model)
    dense = {n: linear_weight(m).clone() for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}
    untouched = {n: p.clone() for n, p in model.named_parameters() if not any(n.startswith(f"{k}.") for k in dense)}
    result = netslim.compress(model, {"method": "wanda", "ratio": 0.5}, token_windows, progress=False)
    assert sorted(r["name"] for r in result.layers) == sorted(dense)
    for name, before in dense.items():
        w = linear_weight(model.get_submodule(name))
        assert w.shape == before.shape, name
        assert ((w == 0).sum(dim=1) == before.shape[1] // 2).all(), name  # exact per row
        kept = w != 0
        assert torch.equal(w[kept], before[kept]), name  # survivors are not updated
    for name, p in model.named_parameters():
        if name in untouched:
            assert torch.equal(p, untouched[name]), name  # embeddings, norms, head, biases
    assert not torch.equal(_logits(model), _logits(tiny_model(model_type)))
    _save_and_reload(result, tmp_path)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_rtn_replaces_every_projection_by_a_quantized_module_and_round_trips(model_type, tmp_path):
    model = _tiny(model_type)
    adapter = ModelAdapter.from_model(model)
    before = {n: (linear_weight(m).clone(), None if getattr(m, "bias", None) is None else m.bias.clone())
              for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}
    group_size = 16 if all(w.shape[1] % 16 == 0 for w, _ in before.values()) else -1
    result = netslim.compress(model, {"method": "rtn", "bits": 4, "group_size": group_size}, progress=False)
    assert sorted(r["name"] for r in result.layers) == sorted(before)
    for name, (weight, bias) in before.items():
        module = model.get_submodule(name)
        assert isinstance(module, QuantizedLinear), name
        assert module.bits == 4 and (module.in_features, module.out_features) == (weight.shape[1], weight.shape[0])
        assert int(module.codes.max()) <= 15
        step = module.scales[:, module.g_idx.long()]
        error = (module.dequantize() - weight).abs()
        assert (error <= step / 2 + 1e-6).all(), name  # round to nearest on the group's grid
        assert error.max() > 0, name  # and the weight did change
        if bias is None:
            assert module.bias is None, name
        else:
            assert torch.equal(module.bias, bias), name
    _, loaded = _save_and_reload(result, tmp_path)
    loaded_adapter = ModelAdapter.from_model(loaded)
    for i in range(loaded_adapter.num_blocks):
        assert all(isinstance(m, QuantizedLinear) for m in loaded_adapter.block_linears(i).values())
