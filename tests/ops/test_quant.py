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
