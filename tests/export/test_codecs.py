"""Storage codecs: bit packing and every codec invert exactly; the automatic choice."""

from __future__ import annotations

import pytest
import torch

from netslim.errors import ConfigError
from netslim.export.codecs import choose_codec, decode, encode, nm_pattern, pack_bits, unpack_bits
from netslim.ops.masks import nm_mask, row_mask

GEN = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=GEN)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
@pytest.mark.parametrize("count", [0, 1, 31, 32, 33, 97, 1000])
def test_pack_unpack_exact(bits, count):
    values = torch.randint(0, 1 << bits, (count,), generator=GEN)
    values[:1] = (1 << bits) - 1  # the largest code is representable
    words = pack_bits(values, bits)
    assert words.dtype == torch.int32
    assert words.numel() == -(-count // 32) * bits  # 32 values fill exactly `bits` words
    assert torch.equal(unpack_bits(words, bits, count), values)


def test_three_bit_values_cross_word_boundaries():
    # Value 10 of a run starts at bit 30: its low 2 bits end word 0, its high bit starts word 1.
    values = torch.zeros(32, dtype=torch.int64)
    values[10] = 0b101
    words = pack_bits(values, 3)
    assert words[0].item() & 0xFFFFFFFF == 0b01 << 30
    assert words[1].item() == 0b1
    assert torch.equal(unpack_bits(words, 3, 32), values)


def test_pack_rejects_out_of_range():
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([0, 16]), 4)
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([-1]), 4)


def _sparse(shape, sparsity=0.5):
    w = _randn(*shape)
    return w * row_mask(w.abs(), sparsity)


def _nm(shape, n, m):
    w = _randn(*shape)
    return w * nm_mask(w.abs(), n, m)


CASES = {
    "dense": lambda: _randn(7, 13),
    "vector": lambda: _randn(11),
    "all_zero_rows": lambda: torch.cat([torch.zeros(3, 24), _sparse((2, 24))]),
    "unstructured_odd": lambda: _sparse((9, 37), 0.6),
    "2:4": lambda: _nm((5, 12), 2, 4),
    "1:4": lambda: _nm((3, 20), 1, 4),
    "4:8": lambda: _nm((6, 16), 4, 8),
    "2:4_with_zero_kept": lambda: _nm((4, 8), 2, 4) * (torch.arange(8) != 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("codec", ["dense", "bitmask", "nm"])
def test_float_codecs_exact_in_float32(case, codec):
    tensor = CASES[case]()
    if codec == "nm" and nm_pattern(tensor) is None:
        with pytest.raises(ConfigError):
            encode(tensor, codec, torch.float32)
        return
    parts, record = encode(tensor, codec, torch.float32)
    assert torch.equal(decode(parts, record), tensor)


@pytest.mark.parametrize("codec", ["dense", "bitmask", "nm"])
def test_float16_values_round_within_half_precision(codec):
    tensor = _nm((8, 32), 2, 4)
    parts, record = encode(tensor, codec, torch.float16)
    assert all(p.dtype in (torch.float16, torch.int32) for p in parts.values())
    out = decode(parts, record)
    assert out.dtype == torch.float32
    assert torch.equal(out == 0, tensor == 0)  # zeros stay zeros
    torch.testing.assert_close(out, tensor, rtol=2**-10, atol=0)


def test_float16_overflow_keeps_original_dtype():
    tensor = torch.tensor([[1e6, 0.0, 0.0, 2.0]])
    parts, record = encode(tensor, "bitmask", torch.float16)
    assert parts["values"].dtype == torch.float32
    assert torch.equal(decode(parts, record), tensor)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lowbit_codes_zeros_and_group_index_exact(bits):
    codes = torch.randint(0, 1 << bits, (24, 40), generator=GEN).to(torch.uint8)
    zeros = torch.randint(0, 1 << bits, (24, 3), generator=GEN).float()
    g_idx = (torch.arange(40) // 16).to(torch.int32)
    for tensor in (codes, zeros, g_idx):
        parts, record = encode(tensor, "lowbit", torch.float16)
        assert record["bits"] <= bits
        out = decode(parts, record)
        assert out.dtype == tensor.dtype and torch.equal(out, tensor)


def test_lowbit_rejects_fractional_values():
    with pytest.raises(ConfigError):
        encode(torch.tensor([0.5, 1.0]), "lowbit", torch.float16)


def test_nm_indices_use_log2_m_bits():
    tensor = _nm((8, 64), 2, 4)
    parts, record = encode(tensor, "nm", torch.float16)
    assert (record["n"], record["m"], record["index_bits"]) == (2, 4, 2)
    assert parts["values"].numel() == tensor.numel() // 2
    assert parts["indices"].numel() * 32 == tensor.numel() // 2 * 2  # 2 bits per kept value


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: _randn(16, 32), "dense"),
        (lambda: _sparse((16, 32), 0.1), "dense"),  # too dense to gain
        (lambda: _sparse((16, 32), 0.5), "bitmask"),
        (lambda: _nm((16, 32), 2, 4), "nm"),
        (lambda: _nm((16, 32), 1, 4), "nm"),
        (lambda: _nm((16, 32), 4, 8), "bitmask"),  # 3 index bits per kept value lose to the mask
        (lambda: torch.randint(0, 16, (16, 32), generator=GEN).to(torch.uint8), "lowbit"),
        (lambda: torch.randint(0, 16, (16, 3), generator=GEN).float(), "lowbit"),  # zero points
        (lambda: _randn(32), "dense"),
    ],
)
def test_auto_choice(make, expected):
    assert choose_codec(make(), torch.float16) == expected


def test_unknown_codec_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown storage codec"):
        encode(torch.zeros(2), "zip", torch.float16)
