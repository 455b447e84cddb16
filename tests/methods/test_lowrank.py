"""svd / asvd / svd_llm on a tiny Llama: shapes, parameter budgets, and the quality order."""

import pytest
import torch

import netslim
from netslim.engine.capture import capture_block_inputs
from netslim.errors import ConfigError
from netslim.eval.size import model_size
from netslim.models.adapter import ModelAdapter
from netslim.nn.lowrank import FactorizedLinear
from netslim.ops.lowrank import factorized_params
from netslim.recipe import dump_recipe, load_recipe

from tiny_models import tiny_model


def _projection_params(model):
    adapter = ModelAdapter.from_model(model)
    return sum(p.numel() for i in range(adapter.num_blocks) for m in adapter.block_linears(i).values() for p in m.parameters())


@pytest.mark.parametrize("method", ["svd", "asvd", "svd_llm"])
def test_every_projection_is_factorized_at_the_uniform_rank(method, token_windows):
    model = tiny_model("llama")
    dense = _projection_params(model)
    result = netslim.compress(model, {"method": method, "ratio": 0.3}, token_windows, progress=False)
    adapter = ModelAdapter.from_model(model)
    q = adapter.block_linears(0)["model.layers.0.self_attn.q_proj"]
    assert isinstance(q, FactorizedLinear) and q.rank == int(0.7 * 64 * 64 / 128)
    removed = 1 - _projection_params(model) / dense
    assert 0.3 <= removed <= 0.34  # ranks round down
    assert all(r["rank"] for r in result.layers)
    logits = model(token_windows.ids[:1]).logits
    assert torch.isfinite(logits).all()


def test_full_rank_by_hand_reproduces_the_model(token_windows):
    model = tiny_model("llama")
    ids = token_windows.ids[:2]
    before = model(ids).logits
    adapter = ModelAdapter.from_model(model)
    ranks = {n: min(m.weight.shape) for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}
    netslim.compress(model, {"method": "svd_llm", "ranks": ranks}, token_windows, progress=False)
    assert torch.allclose(model(ids).logits, before, atol=1e-4)


@torch.no_grad()
def _block0_output_error(method, windows):
    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    hidden, calls = capture_block_inputs(adapter, windows.ids)
    block = adapter.blocks[0]
    dense = block(hidden, *calls[0].args, **calls[0].kwargs)[0]
    netslim.compress(model, {"method": method, "ratio": 0.4, "ignore": ["model.layers.1.*"]}, windows, progress=False)
    out = block(hidden, *calls[0].args, **calls[0].kwargs)[0]
    return float((out - dense).square().mean())


def test_whitened_svd_has_lower_block_error_than_plain_svd(token_windows):
    assert _block0_output_error("svd_llm", token_windows) < _block0_output_error("svd", token_windows)


def test_sensitivity_allocation_meets_the_ratio_with_uneven_ranks(token_windows):
    model = tiny_model("llama")
    dense = _projection_params(model)
    result = netslim.compress(model, {"method": "svd_llm", "ratio": 0.3, "allocation": "sensitivity"}, token_windows, progress=False)
    removed = 1 - _projection_params(model) / dense
    assert 0.3 <= removed <= 0.33
    ranks = {r["name"]: r["rank"] for r in result.layers}
    same_shape = [ranks[f"model.layers.{i}.self_attn.{p}_proj"] for i in (0, 1) for p in "qo"]
    assert len(set(same_shape)) > 1  # uniform would give all four 64x64 matrices one rank
    for record in result.layers:
        if record["rank"] is not None:
            assert record["params_factorized"] < record["params_dense"]


def test_parameter_count_reflects_the_factorization(token_windows):
    model = tiny_model("llama")
    before = model_size(model).params
    result = netslim.compress(model, {"method": "svd", "ratio": 0.5}, None, progress=False)
    saved = sum(r["params_dense"] - r["params_factorized"] for r in result.layers)
    assert saved > 0.45 * sum(r["params_dense"] for r in result.layers)
    assert model_size(model).params == before - saved
    q = result.layers[0]
    assert q["params_factorized"] == factorized_params(64, 64, q["rank"])


def test_typos_and_bad_ratios_are_config_errors():
    with pytest.raises(ConfigError, match="ratio"):
        netslim.parse_recipe({"method": "svd_llm", "ratio": 1.5})
    with pytest.raises(ConfigError, match="allocation"):
        netslim.parse_recipe({"method": "svd", "allocation": "greedy"})
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        netslim.parse_recipe({"method": "asvd", "alpah": 0.5})


def test_lowrank_and_eora_recipes_round_trip_through_yaml(tmp_path):
    stages = netslim.parse_recipe([
        {"method": "svd_llm", "ranks": {"model.layers.0.self_attn.q_proj": 8}, "damp": 1e-4},
        {"method": "asvd", "ratio": 0.3, "allocation": "sensitivity", "alpha": 1.0},
        {"method": "eora", "rank": 16},
    ])
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(stages))
    assert load_recipe(path) == stages


def test_hand_given_ranks_must_name_real_projections_with_valid_ranks(token_windows):
    with pytest.raises(ConfigError, match="did you mean 'model.layers.0.self_attn.q_proj'"):
        netslim.compress(tiny_model("llama"), {"method": "svd", "ranks": {"model.layers.0.self_attn.q_prj": 8}}, None, progress=False)
    with pytest.raises(ConfigError, match="use 1 to 64"):
        netslim.compress(tiny_model("llama"), {"method": "svd", "ranks": {"model.layers.0.self_attn.q_proj": 65}}, None, progress=False)
    with pytest.raises(ConfigError, match="rank 0"):
        netslim.compress(tiny_model("llama"), {"method": "svd", "ranks": {"model.layers.0.self_attn.q_proj": 0}}, None, progress=False)
