"""Quantization grids: known answers, ranges, groups, and the storage convention."""

import pytest
import torch

from netslim.errors import ConfigError
from netslim.methods.rtn import RTNConfig
from netslim.ops.quant import dequantize, grid_params, group_index, group_params, quantize_rtn


def test_asymmetric_two_bit_known_answer():
    w = torch.tensor([[-1.0, 0.0, 1.0, 2.0]])
    q = quantize_rtn(w, bits=2, group_size=-1, sym=False)
    assert q.scales.tolist() == [[1.0]] and q.zeros.tolist() == [[1.0]]
    assert q.codes.tolist() == [[0, 1, 2, 3]] and q.codes.dtype == torch.uint8
    assert torch.equal(q.dequantize(), w)


def test_symmetric_grid_centres_the_zero_point():
    w = torch.tensor([[-2.0, 0.5, 1.0, 2.0]])
    scale, zero = grid_params(w, bits=2, sym=True)
    assert zero.tolist() == [2.0] and torch.allclose(scale, torch.tensor([4.0 / 3]))
    scale8, zero8 = grid_params(w, bits=8, sym=True)
    assert zero8.tolist() == [128.0] and torch.allclose(scale8, torch.tensor([4.0 / 255]))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("sym", [False, True])
def test_codes_in_range_and_error_within_half_a_step(bits, sym):
    w = torch.randn(8, 96, generator=torch.Generator().manual_seed(bits))
    q = quantize_rtn(w, bits, group_size=32, sym=sym)
    assert int(q.codes.max()) <= 2**bits - 1
    step = q.scales[:, q.g_idx.long()]
    assert ((q.dequantize() - w).abs() <= step / 2 + 1e-6).all()


def test_zero_stays_exactly_zero():
    w = torch.randn(4, 64)
    w[:, ::3] = 0
    for sym in (False, True):
        assert (quantize_rtn(w, 3, 32, sym).dequantize()[:, ::3] == 0).all()


def test_each_group_has_its_own_scale():
    w = torch.ones(2, 96)
    w[:, 64:] = 10.0
    scales, _ = group_params(w, bits=4, group_size=64, sym=True)
    assert scales.shape == (2, 2)  # 96 = 64 + a shorter last group of 32
    assert torch.allclose(scales[:, 1], 10 * scales[:, 0])
    assert group_index(96, 64).tolist() == [0] * 64 + [1] * 32
    assert group_index(96, -1).tolist() == [0] * 96


def test_dequantize_follows_the_shared_convention():
    codes = torch.tensor([[0, 3, 7, 15]], dtype=torch.uint8)
    scales, zeros = torch.tensor([[0.5, 2.0]]), torch.tensor([[8.0, 1.0]])
    g_idx = torch.tensor([0, 0, 1, 1], dtype=torch.int32)
    assert dequantize(codes, scales, zeros, g_idx).tolist() == [[-4.0, -2.5, 12.0, 28.0]]


def test_quantized_linear_reads_the_same_convention():
    from netslim.nn.quantized import QuantizedLinear

    w = torch.randn(16, 64)
    q = quantize_rtn(w, 4, 32)
    module = QuantizedLinear.from_codes(q.codes, q.scales, q.zeros, 4, 32, q.g_idx, None)
    assert torch.allclose(module.dequantize(), q.dequantize())


@pytest.mark.parametrize("bad", [{"bits": 1}, {"bits": 9}, {"group_size": 0}, {"group_size": -2}])
def test_bad_grid_settings_are_config_errors(bad):
    with pytest.raises(ConfigError) as error:
        RTNConfig(**bad)
    assert "\n" not in str(error.value) and next(iter(bad)) in str(error.value)


@pytest.mark.parametrize(("bits", "sym"), [(4, True), (4, False), (5, True), (5, False), (8, True)])
def test_fitted_grids_store_float16_scales_and_beat_min_max(bits, sym):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(bits))
    plain = quantize_rtn(w, bits, group_size=32, sym=sym)
    fitted = quantize_rtn(w, bits, group_size=32, sym=sym, fit=True)
    assert torch.equal(fitted.scales, fitted.scales.half().float())  # GGUF stores d as float16, unchanged
    if sym:
        assert torch.all(fitted.zeros == 2 ** (bits - 1))
    else:  # W = s * code + m with a float16 minimum m = -s * zero
        m = -fitted.scales * fitted.zeros
        torch.testing.assert_close(m, m.half().float(), rtol=1e-6, atol=0)
    assert int(fitted.codes.max()) <= 2**bits - 1
    err_plain = (plain.dequantize() - w).square().sum()
    err_fitted = (fitted.dequantize() - w).square().sum()
    assert err_fitted < 0.95 * err_plain


def test_fitted_grid_weights_the_error_by_importance():
    w = torch.randn(32, 32, generator=torch.Generator().manual_seed(0))
    importance = torch.ones(32)
    importance[:4] = 1000.0  # four columns that matter most
    even, _ = grid_params(w, 4, True, fit=True)
    weighted, _ = grid_params(w, 4, True, fit=True, importance=importance)
    err = {}
    for name, scale in (("even", even), ("weighted", weighted)):
        q = torch.clamp(torch.round(w / scale[:, None]), -8, 7) * scale[:, None]
        err[name] = float((importance * (q - w).square()).sum())
    assert err["weighted"] < err["even"]


def test_gguf_setting_fixes_the_grid_and_refuses_conflicts():
    cfg = RTNConfig(gguf="q5_1")
    assert (cfg.bits, cfg.group_size, cfg.sym) == (5, 32, False)
    with pytest.raises(ConfigError, match="gguf=q4_0 sets group_size=32"):
        RTNConfig(gguf="q4_0", group_size=128)
    with pytest.raises(ConfigError, match="q4_0"):
        RTNConfig(gguf="q2_k")


@pytest.mark.parametrize("name", ["q4_k", "q5_k", "q6_k", "q3_k"])
def test_kquant_grids_are_recovered_from_their_scales_and_beat_min_max(name):
    from netslim.ops.kgrid import K_GRIDS, recover

    grid = K_GRIDS[name]
    w = torch.randn(16, 512, generator=torch.Generator().manual_seed(len(name)))
    k = quantize_rtn(w, grid.bits, grid.sub, not grid.asym, kgrid=grid)
    params = recover(k.scales, k.zeros, grid)
    assert params is not None and params.sc.shape == (16 * 2, grid.subs)
    assert params.sc.min() >= grid.scale_low and params.sc.max() <= grid.scale_high
    assert (params.d.astype("float16").astype("float64") == params.d).all()  # float16 super-block scales
    rebuilt = (params.d[:, None] * params.sc).reshape(16, -1)
    assert torch.equal(torch.from_numpy(rebuilt).float(), k.scales)
    plain = quantize_rtn(w, grid.bits, grid.sub, not grid.asym)
    assert recover(plain.scales, plain.zeros, grid) is None  # min/max scales have no super-block structure
    assert (k.dequantize() - w).square().sum() < (plain.dequantize() - w).square().sum()


def test_kquant_setting_falls_back_where_inputs_are_not_a_multiple_of_256():
    from netslim.ops.quant import gguf_grid

    assert gguf_grid("q4_k", 512).kgrid is not None and gguf_grid("q4_k", 512).fallback is None
    fallback = gguf_grid("q4_k", 576)
    assert (fallback.name, fallback.bits, fallback.group_size, fallback.sym) == ("q4_1", 4, 32, False)
    assert "576 inputs are not a multiple of 256" in fallback.fallback
    assert gguf_grid("q3_k", 576).name == "q4_0" and gguf_grid("q6_k", 576).name == "q8_0"
    cfg = RTNConfig(gguf="q6_k")
    assert (cfg.bits, cfg.group_size, cfg.sym) == (6, 16, True)
