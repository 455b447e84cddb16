"""SparseGPT and GPTQ through ``netslim.compress``: N:M validity, exact sparsity, chained and
joint recipes with save/load, and OWL allocation."""

import pytest
import torch
import transformers as T

import netslim
import netslim.methods.gptq as gptq_module
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.nn.quantized import QuantizedLinear
from tiny_models import TINY_CONFIGS


def _dense_weight(module: torch.nn.Module) -> torch.Tensor:
    return module.dequantize() if isinstance(module, QuantizedLinear) else linear_weight(module)


def _decoder_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    adapter = ModelAdapter.from_model(model)
    return {n: _dense_weight(m) for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_sparsegpt_nm_every_group_holds_exactly_n(llama_model, token_windows, pattern):
    n, m = map(int, pattern.split(":"))
    result = netslim.compress(llama_model, {"method": "sparsegpt", "pattern": pattern}, token_windows, progress=False)
    weights = _decoder_weights(llama_model)
    assert len(weights) == len(result.layers) == 14
    for name, w in weights.items():
        groups = (w != 0).view(w.shape[0], -1, m).sum(dim=2)
        assert (groups == n).all(), name  # kept weights are updated, never exactly zero
    assert {r["target_sparsity"] for r in result.layers} == {1 - n / m}


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_unstructured_sparsity_is_exact_per_layer(llama_model, token_windows, sparsity):
    result = netslim.compress(llama_model, netslim.SparseGPTConfig(ratio=sparsity), token_windows, progress=False)
    weights = _decoder_weights(llama_model)
    for record in result.layers:
        w = weights[record["name"]]
        assert w.shape[1] <= 128  # one column block per layer, so the count is over the whole layer
        assert int((w == 0).sum()) == int(w.numel() * sparsity), record["name"]
        assert record["sparsity"] == int(w.numel() * sparsity) / w.numel()
        assert record["hessian_fallback"] == "none"


def test_sparsegpt_then_gptq_keeps_every_pruned_zero(llama_model, token_windows, monkeypatch, tmp_path):
    seen = []  # (zeros GPTQ received, GPTQ's dequantized output) per layer

    def spy(weight, *args, **kwargs):
        result = real(weight, *args, **kwargs)
        seen.append(((weight == 0).clone(), result.qweight.dequantize()))
        return result

    real = gptq_module.gptq_quantize
    monkeypatch.setattr(gptq_module, "gptq_quantize", spy)
    recipe = [{"method": "sparsegpt", "ratio": 0.5}, {"method": "gptq", "bits": 4, "group_size": 32}]
    result = netslim.compress(llama_model, recipe, token_windows, progress=False)
    assert len(seen) == 14
    for pruned, dequantized in seen:
        assert int(pruned.sum()) == pruned.numel() // 2  # SparseGPT's exact sparsity reached GPTQ
        assert (dequantized[pruned] == 0).all()
    for record in result.layers:
        assert record["methods"] == ["sparsegpt", "gptq"] and record["bits"] == 4
        assert record["sparsity"] >= 0.5  # rounding can add zeros, never remove one
        assert isinstance(llama_model.get_submodule(record["name"]), QuantizedLinear)
    _assert_round_trip(result, tmp_path / "out")


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_joint_sparsegpt_quantization(llama_model, token_windows, pattern, tmp_path):
    stage = {"method": "sparsegpt", "pattern": pattern, "ratio": 0.5, "bits": 4, "group_size": 32}
    if pattern != "unstructured":
        del stage["ratio"]
    result = netslim.compress(llama_model, stage, token_windows, progress=False)
    for name, w in _decoder_weights(llama_model).items():
        assert isinstance(llama_model.get_submodule(name), QuantizedLinear), name
        if pattern == "2:4":
            assert ((w != 0).view(w.shape[0], -1, 4).sum(dim=2) <= 2).all(), name
        assert float((w == 0).float().mean()) >= 0.5, name
        codes = llama_model.get_submodule(name).codes
        assert int(codes.max()) <= 15
    assert {r["bits"] for r in result.layers} == {4}
    _assert_round_trip(result, tmp_path / "out")


def _assert_round_trip(result, folder) -> None:
    """``netslim.load(netslim.save(result))`` computes bit-identical logits (auto format, whose
    fp16 storage of the tensors beside quantized layers ``round_for_storage`` applies first)."""
    ids = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    netslim.export.round_for_storage(result.model)
    with torch.no_grad():
        expected = result.model(ids).logits
    netslim.save(result, folder)
    loaded = netslim.load(folder).model
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected)
    assert sum(isinstance(m, QuantizedLinear) for m in loaded.modules()) == 14


def _outlier_llama() -> torch.nn.Module:
    """A tiny 4-block Llama whose block 2 reads 4 strongly amplified channels (many outliers)."""
    torch.manual_seed(0)
    config = TINY_CONFIGS["llama"]()
    config.num_hidden_layers = 4
    model = T.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        model.model.layers[2].input_layernorm.weight[:4] = 30.0
        model.model.layers[2].post_attention_layernorm.weight[:4] = 30.0
    return model


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude"])
def test_owl_allocation_lands_in_the_report(token_windows, method):
    model, target, lam = _outlier_llama(), 0.6, 0.08
    stage = {"method": method, "ratio": target, "allocation": "owl", "owl_lambda": lam}
    result = netslim.compress(model, stage, token_windows, progress=False)
    per_block: dict[int, set[float]] = {}
    for record in result.layers:
        per_block.setdefault(int(record["name"].split(".")[2]), set()).add(record["target_sparsity"])
    assert sorted(per_block) == [0, 1, 2, 3] and all(len(s) == 1 for s in per_block.values())
    block = [per_block[i].pop() for i in range(4)]
    assert sum(block) / 4 == pytest.approx(target)
    assert all(target - lam - 1e-9 <= s <= target + lam + 1e-9 for s in block)
    assert len({round(s, 6) for s in block}) > 1
    assert min(range(4), key=block.__getitem__) == 2  # the outlier block is pruned least
    weights = _decoder_weights(model)
    for record in result.layers:  # and each layer is pruned to its block's sparsity
        w, s = weights[record["name"]], record["target_sparsity"]
        expected = w.shape[0] * int(w.shape[1] * s) if method == "wanda" else int(w.numel() * s)
        assert int((w == 0).sum()) == expected, record["name"]
