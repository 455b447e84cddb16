"""FactorizedLinear and LowRankCompensated: exact forward, and save/load round trips."""

import pytest
import torch
from torch import nn

import netslim
from netslim.eval.size import folder_weight_bytes, model_size
from netslim.export.save import round_for_storage
from netslim.export.modules import build_module, module_spec
from netslim.nn.lowrank import FactorizedLinear, LowRankCompensated

from tiny_models import tiny_model


def test_factorized_linear_computes_up_times_down_plus_bias():
    g = torch.Generator().manual_seed(0)
    up, down, bias = torch.randn(6, 3, generator=g), torch.randn(3, 5, generator=g), torch.randn(6, generator=g)
    layer = FactorizedLinear.from_factors(up, down, bias)
    x = torch.randn(4, 5, generator=g)
    assert torch.allclose(layer(x), x @ (up @ down).t() + bias, atol=1e-6)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (6 + 5) + 6


def test_compensated_spec_nests_its_base_and_rebuilds_it():
    base = nn.Linear(5, 6, bias=True)
    wrapped = LowRankCompensated.around(base, torch.randn(6, 2), torch.randn(2, 5))
    spec = module_spec(wrapped)
    assert spec["base"] == {"kind": "linear", "in_features": 5, "out_features": 6, "bias": True}
    rebuilt = build_module(spec)
    rebuilt.load_state_dict(wrapped.state_dict())
    x = torch.randn(3, 5)
    assert torch.equal(rebuilt(x), wrapped(x))
    nested = build_module(module_spec(LowRankCompensated.around(FactorizedLinear(5, 6, 2), torch.randn(6, 1), torch.randn(1, 5))))
    assert isinstance(nested.base, FactorizedLinear) and nested.base.rank == 2


@pytest.mark.parametrize(
    "recipe",
    [
        [{"method": "svd_llm", "ratio": 0.4, "allocation": "sensitivity"}],
        [{"method": "wanda", "ratio": 0.5}, {"method": "eora", "rank": 4}],
        [{"method": "rtn", "bits": 3, "group_size": 32}, {"method": "eora", "rank": 4}],
    ],
    ids=["factorized", "compensated", "quantized-compensated"],
)
def test_save_and_load_give_identical_logits(recipe, token_windows, tmp_path):
    model = tiny_model("llama")
    result = netslim.compress(model, recipe, token_windows, progress=False)
    round_for_storage(model)  # what the default (float16 beside quantized layers) stores
    netslim.save(result, tmp_path / "out")
    loaded = netslim.load(tmp_path / "out").model
    ids = token_windows.ids[:2]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert model_size(loaded).params == model_size(model).params


def test_factorized_model_is_smaller_on_disk(token_windows, tmp_path):
    dense = tiny_model("llama")
    netslim.save(netslim.compress(tiny_model("llama"), {"method": "magnitude", "ratio": 0.1}, None, progress=False), tmp_path / "dense")
    result = netslim.compress(dense, {"method": "svd", "ratio": 0.5}, None, progress=False)
    netslim.save(result, tmp_path / "svd")
    saved = sum(r["params_dense"] - r["params_factorized"] for r in result.layers) * 4
    # the factors save exactly their bytes; the safetensors header grows by two names per layer
    assert folder_weight_bytes(tmp_path / "dense") - folder_weight_bytes(tmp_path / "svd") == pytest.approx(saved, abs=4096)
