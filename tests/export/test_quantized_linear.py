"""QuantizedLinear: the dequantization convention, forward, and the low-bit kernel paths."""

from __future__ import annotations

import pytest
import torch

from netslim.eval.size import model_size
from netslim.nn.quantized import QuantizedLinear
from storage_helpers import rtn

GEN = torch.Generator().manual_seed(0)


def _layer(out_features=32, in_features=256, bits=4, group_size=128, bias=True):
    weight = torch.randn(out_features, in_features, generator=GEN)
    b = torch.randn(out_features, generator=GEN) if bias else None
    return rtn(weight, bits, group_size, b)


def test_dequantize_follows_the_convention():
    codes = torch.tensor([[0, 3, 1, 2]], dtype=torch.uint8)
    scales = torch.tensor([[0.5, 2.0]])
    zeros = torch.tensor([[1.0, 2.0]])
    g_idx = torch.tensor([1, 0, 0, 1], dtype=torch.int32)  # act-order style: not contiguous
    layer = QuantizedLinear.from_codes(codes, scales, zeros, 2, 2, g_idx, torch.tensor([1.0]))
    # W[o,i] = scales[o, g_idx[i]] * (codes[o,i] - zeros[o, g_idx[i]])
    assert torch.equal(layer.dequantize(), torch.tensor([[2.0 * -2, 0.5 * 2, 0.5 * 0, 2.0 * 0]]))
    assert torch.equal(layer(torch.ones(1, 4)), torch.tensor([[-4.0 + 1.0 + 1.0]]))


def test_forward_is_matmul_with_the_dequantized_weight():
    layer = _layer()
    x = torch.randn(3, 5, 256, generator=GEN)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias)


def test_spec_round_trip_rebuilds_same_shapes():
    layer = _layer(bits=3, group_size=64, bias=False)
    rebuilt = QuantizedLinear.from_spec(layer.export_spec())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in layer.state_dict().items()}
    rebuilt.load_state_dict(layer.state_dict())
    assert torch.equal(rebuilt.dequantize(), layer.dequantize())


def test_cache_follows_in_place_edits():
    layer = _layer()
    x = torch.randn(2, 256, generator=GEN)
    before = layer(x)
    layer.codes[:, :8] = 0
    assert not torch.allclose(layer(x), before)
    torch.testing.assert_close(layer(x), x @ layer.dequantize().T + layer.bias)


KERNEL_CASES = [(4, 128), (4, 64), (4, 32), (4, 256), (4, -1), (8, -1)]


@pytest.mark.parametrize(("bits", "group_size"), KERNEL_CASES)
def test_kernel_math_equals_dequantized_matmul_in_float32(bits, group_size):
    layer = _layer(bits=bits, group_size=group_size)
    kernel = layer._kernel()
    assert kernel is not None
    x = torch.randn(4, 256, generator=GEN)
    torch.testing.assert_close(kernel(x), x @ layer.dequantize().T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("bits", "group_size"), KERNEL_CASES)
def test_bfloat16_forward_uses_kernel_and_matches_dense_path(bits, group_size):
    layer = _layer(bits=bits, group_size=group_size)
    x = torch.randn(2, 3, 256, generator=GEN).bfloat16()
    with torch.no_grad():
        out = layer(x)
        assert layer._cache["kernel"][1] is not None  # the kernel really ran
        QuantizedLinear.use_kernels = False
        try:
            dense = layer(x)
        finally:
            QuantizedLinear.use_kernels = True
    reference = x.float() @ layer.dequantize().T + layer.bias
    scale = reference.abs().max()
    assert (out.float() - reference).abs().max() < 0.02 * scale
    assert (out.float() - dense.float()).abs().max() < 0.03 * scale


def test_act_order_groups_use_kernel_through_a_permutation():
    layer = _layer(bits=4, group_size=64)
    perm = torch.randperm(256, generator=GEN)
    layer.g_idx.copy_(layer.g_idx[perm])  # each group still has 64 columns, now scattered
    kernel = layer._kernel()
    assert kernel is not None
    x = torch.randn(4, 256, generator=GEN)
    torch.testing.assert_close(kernel(x), x @ layer.dequantize().T, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(
    "make",
    [
        lambda: _layer(bits=3),  # no 3-bit kernel
        lambda: _layer(out_features=24),  # int4 kernel needs out_features % 16 == 0
        lambda: _layer(in_features=200, group_size=40),  # group size the kernel does not take
        lambda: _layer(bits=8, group_size=128),  # int8 kernel is per-channel only
    ],
)
def test_falls_back_silently_where_no_kernel_applies(make):
    layer = make()
    assert layer._kernel() is None
    x = torch.randn(2, layer.in_features, generator=GEN).bfloat16()
    with torch.no_grad():
        out = layer(x)
    reference = x.float() @ layer.dequantize().T + layer.bias
    assert (out.float() - reference).abs().max() < 0.03 * reference.abs().max()


def test_release_cache_frees_the_float_weight_and_forward_rebuilds_it():
    layer = _layer()
    x = torch.randn(2, 256, generator=GEN)
    before = layer(x)
    assert layer._cache
    layer.release_cache()
    assert not layer._cache
    assert torch.equal(layer(x), before)


def test_model_size_counts_the_quantized_weights():
    dense = torch.nn.Sequential(torch.nn.Linear(256, 32), torch.nn.Linear(32, 8))
    quantized = torch.nn.Sequential(_layer(), torch.nn.Linear(32, 8))
    layer = quantized[0]
    layer.zeros[:4] = 3.0
    layer.codes[:4] = 3  # the first 4 rows dequantize to exactly 0
    size = model_size(quantized)
    assert size.params == model_size(dense).params == 32 * 256 + 32 + 32 * 8 + 8
    tail = sum(int(torch.count_nonzero(p)) for p in quantized[1].parameters())
    head = int(torch.count_nonzero(layer.dequantize())) + int(torch.count_nonzero(layer.bias))
    assert size.nonzero_params == head + tail
    assert size.nonzero_params <= size.params - 4 * 256
    codes_bytes = 32 * 256 + 2 * 4 * 32 * 2  # uint8 codes; fp32 scales and zeros, 2 groups of 128
    assert size.size_bytes == codes_bytes + 4 * (32 + 32 * 8 + 8)
