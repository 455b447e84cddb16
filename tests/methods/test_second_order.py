"""SparseGPT, GPTQ and RTN through their registered methods: orderings, fallbacks, options, errors.

The recipes, N:M validity, OWL and save/load of these methods are in
``test_second_order_recipes.py``.
"""

import math

import pytest
import torch
from torch import nn

import netslim
from netslim.engine.stats import InputStats, Stat
from netslim.errors import ConfigError
from netslim.methods.base import LayerView
from netslim.methods.gptq import GPTQConfig, gptq, gptq_quantize
from netslim.methods.magnitude import MagnitudeConfig, magnitude
from netslim.methods.rtn import RTNConfig, rtn
from netslim.methods.sparsegpt import SparseGPTConfig, sparsegpt, sparsegpt_prune
from netslim.methods.wanda import WandaConfig, wanda
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.nn.quantized import QuantizedLinear

IN, OUT = 256, 64  # two SparseGPT/GPTQ blocks of 128 columns


def correlated_inputs(seed: int, tokens: int = 1024, rank: int = 16) -> torch.Tensor:
    """(tokens, IN) activations: low rank plus 10% noise, with 8 channels scaled up tenfold."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, rank, generator=g) @ torch.randn(rank, IN, generator=g)
    x += 0.1 * torch.randn(tokens, IN, generator=g)
    x[:, torch.randperm(IN, generator=g)[:8]] *= 10.0
    return x


def input_stats(x: torch.Tensor):
    acc = InputStats(x.shape[1], frozenset({Stat.ACT_NORM, Stat.HESSIAN}))
    acc.add(x)
    return acc.view()


def view_of(weight: torch.Tensor) -> LayerView:
    """A LayerView of a fresh bias-free Linear holding a copy of ``weight``."""
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    layer.weight.data = weight.clone()
    holder = nn.Module()
    holder.proj = layer
    return LayerView("proj", layer, 0, holder, "proj")


def output_error(method, cfg, weight: torch.Tensor, x: torch.Tensor) -> float:
    """Relative layer-output error ``||X W^T - X W'^T|| / ||X W^T||`` after ``method``."""
    view = view_of(weight)
    method(view, input_stats(x), cfg)
    with torch.no_grad():
        reference = x @ weight.T
        return float((view.module(x) - reference).norm() / reference.norm())


@pytest.mark.parametrize("seed", [0, 1])
def test_pruning_error_orders_sparsegpt_wanda_magnitude(seed):
    x, weight = correlated_inputs(seed), torch.randn(OUT, IN, generator=torch.Generator().manual_seed(seed + 10))
    errors = {
        "magnitude": output_error(magnitude, MagnitudeConfig(ratio=0.5), weight, x),
        "wanda": output_error(wanda, WandaConfig(ratio=0.5), weight, x),
        "sparsegpt": output_error(sparsegpt, SparseGPTConfig(ratio=0.5), weight, x),
    }
    # OBS reconstruction on correlated inputs removes most of Wanda's error (measured ~5x)
    assert errors["sparsegpt"] < 0.5 * errors["wanda"] < 0.5 * errors["magnitude"], errors


@pytest.mark.parametrize(
    ("bits", "group_size", "sym", "act_order"),
    [(4, 32, False, False), (3, 128, False, False), (3, -1, False, False), (4, 64, True, True), (3, 32, False, True)],
)
def test_gptq_error_below_rtn_at_equal_grid(bits, group_size, sym, act_order):
    x, weight = correlated_inputs(2), torch.randn(OUT, IN, generator=torch.Generator().manual_seed(3))
    grid = {"bits": bits, "group_size": group_size, "sym": sym}
    err_rtn = output_error(rtn, RTNConfig(**grid), weight, x)
    err_gptq = output_error(gptq, GPTQConfig(**grid, act_order=act_order), weight, x)
    assert err_gptq < 0.7 * err_rtn, (err_gptq, err_rtn)


def test_obs_loss_estimates_the_layer_output_error():
    x, weight = correlated_inputs(4), torch.randn(OUT, IN, generator=torch.Generator().manual_seed(5))
    hessian = input_stats(x).hessian
    pruned = sparsegpt_prune(weight, hessian, 0.5, damp=0.0)
    quantized = gptq_quantize(weight, hessian, 3, 64, damp=0.0)
    for loss, compressed in [(pruned.obs_loss, pruned.weight), (quantized.obs_loss, quantized.qweight.dequantize())]:
        actual = float(((compressed - weight) @ x.T).square().sum()) / x.shape[0]
        assert loss == pytest.approx(actual, rel=0.05)


def _duplicated_channel_hessian(tokens: int = 24, width: int = 64) -> torch.Tensor:
    """A singular H: fewer tokens than channels, one channel a copy of another, one never active."""
    x = torch.randn(tokens, width, generator=torch.Generator().manual_seed(0))
    x[:, 1] = x[:, 0]
    x[:, 5] = 0.0
    return 2 * x.T @ x / tokens


@pytest.mark.parametrize("damp", [0.0, 0.01])
def test_singular_hessian_finishes_with_exact_sparsity(damp):
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    pruned = sparsegpt_prune(weight, _duplicated_channel_hessian(), 0.5, damp=damp)
    quantized = gptq_quantize(weight, _duplicated_channel_hessian(), 4, 32, damp=damp)
    # without damping the Cholesky of a rank-24 H fails and the damping retries take over
    expected = "damping" if damp == 0.0 else "none"
    assert pruned.hessian_fallback == quantized.hessian_fallback == expected
    assert torch.isfinite(pruned.weight).all() and torch.isfinite(quantized.qweight.dequantize()).all()
    assert int((pruned.weight == 0).sum()) == weight.numel() // 2
    assert (pruned.weight[:, 5] == 0).all() and (quantized.qweight.dequantize()[:, 5] == 0).all()  # dead input


def test_non_finite_hessian_takes_the_diagonal_fallback():
    hessian = _duplicated_channel_hessian()
    hessian[3, 7] = float("inf")
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    pruned = sparsegpt_prune(weight, hessian, 0.5)
    quantized = gptq_quantize(weight, hessian, 4, 32)
    assert pruned.hessian_fallback == quantized.hessian_fallback == "diagonal"
    assert torch.isfinite(pruned.weight).all() and int((pruned.weight == 0).sum()) == weight.numel() // 2
    assert torch.isfinite(quantized.qweight.dequantize()).all()


@pytest.mark.parametrize("method", ["sparsegpt", "gptq"])
def test_singular_engine_hessian_records_fallback(llama_model, method):
    # one window of 16 tokens: every Hessian has rank <= 16 < 64; channels 0-7 of block 0's
    # attention input are never active (their norm weights are zero)
    llama_model.model.layers[0].input_layernorm.weight.data[:8] = 0.0
    calib = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    grid = {"ratio": 0.5} if method == "sparsegpt" else {"bits": 4, "group_size": 32}
    stage = {"method": method, "damp": 0.0, **grid}
    result = netslim.compress(llama_model, stage, calib, progress=False)
    assert len(result.layers) == 14
    assert {r["hessian_fallback"] for r in result.layers} == {"damping"}
    q = llama_model.model.layers[0].self_attn.q_proj
    weight = q.dequantize() if isinstance(q, QuantizedLinear) else linear_weight(q)
    assert (weight[:, :8] == 0).all()  # dead inputs: nothing learnt, weights zeroed
    with torch.no_grad():
        assert torch.isfinite(llama_model(calib).logits).all()


GPTQ_OPTIONS = [
    (4, 32, False, True), (4, 64, True, False), (3, 128, True, True), (2, -1, False, False), (8, -1, True, True),
]


@pytest.mark.parametrize(("bits", "group_size", "sym", "act_order"), GPTQ_OPTIONS)
def test_gptq_options_give_codes_in_range(llama_model, token_windows, bits, group_size, sym, act_order):
    cfg = GPTQConfig(bits=bits, group_size=group_size, sym=sym, act_order=act_order)
    result = netslim.compress(llama_model, cfg, token_windows, progress=False)
    recorded = {(r["bits"], r["group_size"], r["sym"], r["act_order"]) for r in result.layers}
    assert recorded == {(bits, group_size, sym, act_order)}
    adapter = ModelAdapter.from_model(llama_model)
    maxq = (1 << bits) - 1
    for i in range(adapter.num_blocks):
        for name, module in adapter.block_linears(i).items():
            assert isinstance(module, QuantizedLinear), name
            columns = module.in_features
            width = columns if group_size == -1 else group_size
            assert module.scales.shape == (module.out_features, math.ceil(columns / width))
            assert torch.equal(module.g_idx, torch.arange(columns, dtype=torch.int32) // width)  # static groups
            assert int(module.codes.max()) <= maxq and len(module.codes.unique()) > 1
            if sym:
                assert (module.zeros == (maxq + 1) // 2).all()
            else:
                assert module.zeros.min() >= 0 and module.zeros.max() <= maxq
                assert torch.equal(module.zeros, module.zeros.round())


def test_act_order_changes_the_result():
    x, weight = correlated_inputs(6), torch.randn(OUT, IN, generator=torch.Generator().manual_seed(7))
    hessian = input_stats(x).hessian
    plain = gptq_quantize(weight, hessian, 4, 32).qweight
    ordered = gptq_quantize(weight, hessian, 4, 32, act_order=True).qweight
    assert torch.equal(plain.g_idx, ordered.g_idx)  # static groups keep the natural grouping
    assert not torch.equal(plain.codes, ordered.codes)


@pytest.mark.parametrize(
    ("stage", "named"),
    [
        ({"method": "gptq", "bits": 1}, "bits"),
        ({"method": "gptq", "bits": 9}, "bits"),
        ({"method": "rtn", "bits": 1}, "bits"),
        ({"method": "rtn", "bits": 9}, "bits"),
        ({"method": "sparsegpt", "ratio": 0.5, "bits": 9}, "bits"),
        ({"method": "gptq", "group_size": 0}, "group_size"),
        ({"method": "rtn", "group_size": -2}, "group_size"),
        ({"method": "sparsegpt", "ratio": 0.5, "bits": 4, "group_size": 0}, "group_size"),
    ],
)
def test_bad_grid_is_a_one_line_config_error(llama_model, stage, named):
    with pytest.raises(ConfigError) as info:
        netslim.compress(llama_model, stage, progress=False)
    message = str(info.value)
    assert "\n" not in message and f"{named}=" in message, message


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_owl_without_calibration_is_a_one_line_config_error(llama_model, method):
    stage = {"method": method, "ratio": 0.5, "allocation": "owl"}
    # compress would draw WikiText-2 windows, even for magnitude, but has no tokenizer to do so
    with pytest.raises(ConfigError, match="tokenizer") as info:
        netslim.compress(llama_model, stage, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="^allocation: owl needs calibration data; pass calibration windows$"):
        cfg = netslim.parse_recipe(stage)[0]
        cfg.handler().plan(cfg, ModelAdapter.from_model(llama_model), None)
