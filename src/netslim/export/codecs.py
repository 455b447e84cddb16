"""Tensor storage codecs: how each tensor of a packed artifact is written and read back.

Each codec turns one tensor into a few stored parts (named ``<tensor name>.<part>`` in the
safetensors file) plus a JSON record (kept in ``netslim.json``) that says how to invert it.

| codec     | parts                           | for                                         | bytes per weight        |
|-----------|---------------------------------|---------------------------------------------|-------------------------|
| ``dense`` | ``data``                        | anything                                    | value size              |
| ``lowbit``| ``words`` (int32)               | integer-valued tensors: quantized codes,     | ``bits / 8``            |
|           |                                 | integer zero points, group indices          |                         |
| ``bitmask`` | ``mask`` (int32), ``values``  | unstructured sparse weights                 | ``1/8 + density * value`` |
| ``nm``    | ``values``, ``indices`` (int32) | exact N:M sparse weights (2:4, 1:4, ...)     | ``N/M * (value + log2(M)/8)`` |

Bit packing (``lowbit``, the bitmask, the N:M indices): the flattened values (row-major) are
padded with zeros to a multiple of 32 and every run of 32 values fills exactly ``bits`` int32
words: value ``k`` of the run occupies bits ``[k*bits, (k+1)*bits)`` of the run's
``32*bits``-bit little-endian stream, so 3-bit values cross word boundaries and no bit is
wasted. Any width from 1 to 16 bits works the same way.

Floating-point values (``dense`` data, ``bitmask``/``nm`` values) are stored in the value
dtype chosen for the tensor (:func:`netslim.export.storage.value_dtypes`): ``None`` keeps its
own dtype, exact; ``torch.float16`` halves float32 weights at a relative error <= 2^-11. A
tensor whose values overflow the value dtype keeps its own dtype (:func:`store_values`).
Integer-valued tensors are always exact. :func:`decode` checks every record against its
parts, so a damaged or foreign file fails instead of decoding to wrong values.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from netslim.errors import ConfigError

CODECS = ("dense", "lowbit", "bitmask", "nm")
MIN_SPARSITY = 0.2  # auto: below this a weight stays dense (the packed form barely saves)
NM_GROUPS = (4, 8, 16)  # auto: the M tried when detecting an exact N:M pattern
_WORD = 32


# --- bit packing ------------------------------------------------------------------------

def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers below ``2**bits`` into int32 words (see module docstring)."""
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"values must lie in [0, {1 << bits}) to pack into {bits} bits")
    runs = F.pad(flat, (0, -flat.numel() % _WORD)).view(-1, _WORD)
    words = torch.zeros(runs.shape[0], bits, dtype=torch.int64)
    for k in range(_WORD):
        word, offset = divmod(k * bits, _WORD)
        words[:, word] |= (runs[:, k] << offset) & 0xFFFFFFFF
        if offset + bits > _WORD:  # the value spills into the next word
            words[:, word + 1] |= runs[:, k] >> (_WORD - offset)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words)  # reinterpret as signed
    return words.reshape(-1).to(torch.int32)


def unpack_bits(words: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values, as int64."""
    runs = (words.to(torch.int64) & 0xFFFFFFFF).view(-1, bits)
    values = torch.empty(runs.shape[0], _WORD, dtype=torch.int64)
    for k in range(_WORD):
        word, offset = divmod(k * bits, _WORD)
        value = runs[:, word] >> offset
        if offset + bits > _WORD:
            value = value | (runs[:, word + 1] << (_WORD - offset))
        values[:, k] = value & ((1 << bits) - 1)
    return values.view(-1)[:count]


# --- helpers ------------------------------------------------------------------------------

def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype {name!r} is unknown to this netslim")
    return dtype


def _count(record: dict, key: str, high: int = 1 << 16) -> int:
    """``record[key]``, checked to be an integer from 1 to ``high``."""
    value = record[key]
    if not isinstance(value, int) or not 1 <= value <= high:
        raise ValueError(f"'{key}' must be an integer from 1 to {high}, not {value!r}")
    return value


def _words(count: int, bits: int) -> int:
    """int32 words that :func:`pack_bits` makes of ``count`` values of ``bits`` bits."""
    return math.ceil(count / _WORD) * bits


def store_values(values: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``values`` in the value dtype, unless that would overflow them (then unchanged)."""
    if not values.is_floating_point() or dtype is None or values.dtype == dtype:
        return values.contiguous()
    cast = values.to(dtype)
    return cast.contiguous() if torch.isfinite(cast).all() or not torch.isfinite(values).all() else values.contiguous()


def dense_record(shape: list[int], dtype: torch.dtype, stored: torch.dtype) -> dict:
    """The record of a tensor stored with the ``dense`` codec (its values in ``stored``)."""
    return {"codec": "dense", "shape": shape, "dtype": _dtype_name(dtype), "stored": _dtype_name(stored)}


def _record(codec: str, tensor: torch.Tensor, **params) -> dict:
    return {"codec": codec, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype), **params}


def integer_bits(tensor: torch.Tensor) -> int | None:
    """Bits needed to store ``tensor`` exactly as unsigned integers, or ``None`` if it cannot be."""
    if tensor.numel() == 0 or tensor.dtype == torch.bool or tensor.is_complex():
        return None
    if tensor.is_floating_point() and not (_rounds(tensor.reshape(-1)[:4096]) and _rounds(tensor)):
        return None
    low, high = int(tensor.min()), int(tensor.max())
    return max(1, high.bit_length()) if low >= 0 and high < 1 << 16 else None


def _rounds(tensor: torch.Tensor) -> bool:
    return torch.equal(tensor, tensor.round())


def nm_pattern(tensor: torch.Tensor) -> tuple[int, int] | None:
    """``(N, M)`` if every run of M consecutive inputs of each row has at most N non-zeros
    (N <= M/2), trying M = 4, 8, 16; ``None`` otherwise or for non-matrices."""
    if tensor.dim() != 2 or not tensor.is_floating_point():
        return None
    for m in NM_GROUPS:
        if tensor.shape[1] % m == 0:
            n = int((tensor != 0).view(tensor.shape[0], -1, m).sum(-1).max())
            if 0 < n <= m // 2:
                return n, m
    return None


# --- codecs -------------------------------------------------------------------------------

def lowbit_width(tensor: torch.Tensor, declared: int | None = None) -> int | None:
    """The bit width ``lowbit`` stores ``tensor`` in: what its values need, or ``declared``
    (a quantized layer's bits) when that is wider, so that the stored size follows from the
    shapes and bits alone and never from the data."""
    bits = integer_bits(tensor)
    return None if bits is None else max(bits, declared or 0)


def encode(tensor: torch.Tensor, codec: str, dtype: torch.dtype | None,
           bits: int | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Encode one tensor; return its stored parts and its JSON record.

    ``bits``: the declared width of an integer tensor (see :func:`lowbit_width`).

    Raises:
        ConfigError: if the codec cannot represent this tensor exactly (``lowbit`` on
            non-integer values, ``nm`` on a tensor without an N:M pattern).
    """
    tensor = tensor.detach().cpu()
    if codec == "dense":
        data = store_values(tensor, dtype)
        return {"data": data}, dense_record(list(tensor.shape), tensor.dtype, data.dtype)
    if codec == "lowbit":
        bits = lowbit_width(tensor, bits)
        if bits is None:
            raise ConfigError("codec 'lowbit' needs non-negative integer values below 2^16; use 'dense'")
        return {"words": pack_bits(tensor, bits)}, _record("lowbit", tensor, bits=bits)
    if codec == "bitmask":
        mask = tensor != 0
        values = store_values(tensor[mask], dtype)
        return {"mask": pack_bits(mask, 1), "values": values}, _record("bitmask", tensor)
    if codec == "nm":
        return _encode_nm(tensor, dtype)
    raise ConfigError(f"unknown storage codec '{codec}'; use one of {', '.join(CODECS)}")


def _encode_nm(tensor: torch.Tensor, dtype: torch.dtype | None) -> tuple[dict[str, torch.Tensor], dict]:
    pattern = nm_pattern(tensor)
    if pattern is None:
        raise ConfigError("codec 'nm' needs a weight with an exact N:M sparsity pattern; use 'bitmask'")
    n, m = pattern
    groups = tensor.view(tensor.shape[0], -1, m)  # (out, in/m, m)
    # The N kept positions of each group: its non-zeros first, then the first zeros, in order.
    order = torch.argsort((groups == 0).to(torch.int8), dim=-1, stable=True)[..., :n]
    kept = order.sort(dim=-1).values
    values = store_values(groups.gather(-1, kept), dtype)
    index_bits = max(1, math.ceil(math.log2(m)))
    return ({"values": values, "indices": pack_bits(kept, index_bits)},
            _record("nm", tensor, n=n, m=m, index_bits=index_bits))


def _part_sizes(record: dict, shape: list[int]) -> dict[str, int | None]:
    """Element count of each part the record's codec stores (``None``: checked on decode)."""
    codec, numel = record["codec"], math.prod(shape)
    if codec == "dense":
        return {"data": numel}
    if codec == "lowbit":
        return {"words": _words(numel, _count(record, "bits", 16))}
    if codec == "bitmask":
        return {"mask": _words(numel, 1), "values": None}  # one value per set mask bit
    if codec == "nm":
        n, m = _count(record, "n"), _count(record, "m")
        if len(shape) != 2 or shape[1] % m or n > m:
            raise ValueError(f"an {n}:{m} pattern does not fit shape {shape}")
        kept = shape[0] * shape[1] // m * n
        return {"values": kept, "indices": _words(kept, _count(record, "index_bits", 16))}
    raise ConfigError(f"storage codec '{codec}' is unknown to this netslim; upgrade netslim")


def decode(parts: dict[str, torch.Tensor], record: dict) -> torch.Tensor:
    """Inverse of :func:`encode`: the tensor in its original shape and dtype.

    Raises:
        ValueError: if the record is malformed or does not match its parts (a damaged or
            foreign file); a :class:`ConfigError` for a codec this netslim does not know.
    """
    if not isinstance(record, dict):
        raise ValueError(f"the record {record!r} is not an object")
    shape, dtype, codec = record["shape"], _dtype(record["dtype"]), record["codec"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(f"shape {shape!r} is not a list of sizes")
    sizes = {name: part.numel() for name, part in parts.items()}
    expected = _part_sizes(record, shape)
    if sizes.keys() != expected.keys() or any(n is not None and sizes[k] != n for k, n in expected.items()):
        raise ValueError(f"parts {sizes} do not match shape {shape} under codec '{codec}'")
    numel = math.prod(shape)
    if codec == "dense":
        return parts["data"].to(dtype).reshape(shape)
    if codec == "lowbit":
        return unpack_bits(parts["words"], record["bits"], numel).to(dtype).reshape(shape)
    if codec == "bitmask":
        mask = unpack_bits(parts["mask"], 1, numel).bool()
        if int(mask.sum()) != sizes["values"]:
            raise ValueError(f"{sizes['values']} values for a mask of {int(mask.sum())} non-zeros")
        out = torch.zeros(numel, dtype=dtype)
        out[mask] = parts["values"].reshape(-1).to(dtype)
        return out.reshape(shape)
    m, n = record["m"], record["n"]
    values = parts["values"].to(dtype).reshape(shape[0], shape[1] // m, n)
    kept = unpack_bits(parts["indices"], record["index_bits"], values.numel()).view(values.shape)
    if values.numel() and int(kept.max()) >= m:
        raise ValueError(f"N:M indices exceed M = {m}")
    out = torch.zeros(shape[0], shape[1] // m, m, dtype=dtype)
    return out.scatter_(-1, kept, values).reshape(shape)


# --- automatic choice ---------------------------------------------------------------------

def encoded_bytes(tensor: torch.Tensor, codec: str, dtype: torch.dtype | None, bits: int | None = None) -> int:
    """Bytes the parts of ``tensor`` would take under ``codec`` (without encoding it)."""
    numel = tensor.numel()
    value = torch.empty((), dtype=dtype or tensor.dtype).element_size()
    if codec == "lowbit":
        return _words(numel, lowbit_width(tensor, bits)) * 4
    if codec == "bitmask":
        return _words(numel, 1) * 4 + int(torch.count_nonzero(tensor)) * value
    if codec == "nm":
        n, m = nm_pattern(tensor)
        kept = numel * n // m
        return kept * value + _words(kept, max(1, math.ceil(math.log2(m)))) * 4
    return numel * (value if tensor.is_floating_point() else tensor.element_size())


def choose_codec(tensor: torch.Tensor, dtype: torch.dtype | None, bits: int | None = None) -> str:
    """The codec ``format="auto"`` uses for ``tensor``.

    Integer-valued tensors (quantized codes, zero points, group indices) are bit-packed;
    floating matrices with an exact N:M pattern use ``nm`` unless ``bitmask`` is smaller
    (it is for 4:8: one mask bit per weight beats 3 index bits per kept weight); other
    matrices sparser than :data:`MIN_SPARSITY` use ``bitmask``; the rest stay ``dense``.
    ``bits``: the declared width of an integer tensor (:func:`lowbit_width`).
    """
    if integer_bits(tensor) is not None and tensor.numel() > 1 and (
        not tensor.is_floating_point() or tensor.dim() == 2 and int(tensor.max()) < 256
    ):
        # Integer-dtype tensors always; float ones only when they are small integer matrices
        # (zero points), which excludes ordinary weights that happen to round.
        if encoded_bytes(tensor, "lowbit", dtype, bits) < encoded_bytes(tensor, "dense", dtype):
            return "lowbit"
    if tensor.dim() != 2 or not tensor.is_floating_point():
        return "dense"
    sparsity = 1 - int(torch.count_nonzero(tensor)) / max(1, tensor.numel())
    if sparsity < MIN_SPARSITY:
        return "dense"
    sizes = {c: encoded_bytes(tensor, c, dtype) for c in ("dense", "bitmask")}
    if nm_pattern(tensor) is not None:
        sizes["nm"] = encoded_bytes(tensor, "nm", dtype) - 1  # prefer nm on a tie (2:4)
    return min(sizes, key=sizes.get)
