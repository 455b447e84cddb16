"""A weight-quantized Linear layer: integer codes with per-group scales and zero points.

Dequantization convention (shared by every method that makes these layers: RTN, GPTQ, ...)::

    W[o, i] = scales[o, g_idx[i]] * (codes[o, i] - zeros[o, g_idx[i]])

``codes`` hold unsigned ``bits``-bit integers in a ``uint8`` tensor in memory (packed into
``int32`` words only on disk, see :mod:`netslim.export.codecs`); ``g_idx`` maps each input
column to its group, so act-order GPTQ (groups that are not contiguous) needs no special case.

Forward on CPU: activations in ``bfloat16`` run torch's low-bit kernels when they apply
(``_weight_int4pack_mm_for_cpu`` for 4-bit groups of 32-256 columns, ``_weight_int8pack_mm``
for 8-bit per-channel); everything else multiplies by a dequantized weight cached on first use.
(On torch 2.13 CPU these kernels are fast only for ``bfloat16`` activations; for ``float32``
the cached dense weight and MKL are ~50x faster, so the kernels are not used there.)
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.export.modules import register_module_kind
from netslim.ops.quant import dequantize, group_index, group_width

__all__ = ["QuantizedLinear", "group_index"]

_INT4_KERNEL_GROUPS = (256, 128, 64, 32)  # group sizes _weight_int4pack_mm_for_cpu accepts


@register_module_kind("quantized")
class QuantizedLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` stored as ``bits``-bit codes, scales and zero points.

    Args:
        in_features: Input width.
        out_features: Output width.
        bits: Bits per code, 1 to 8.
        group_size: Input columns per quantization group; ``-1`` (or ``>= in_features``)
            means one group per output row (per-channel).
        bias: Whether the layer has a bias.
        n_groups: Groups per row; defaults to ``ceil(in_features / group_size)``.
    """

    use_kernels: bool = True  # class-wide switch, e.g. to compare kernel and dense paths

    def __init__(self, in_features: int, out_features: int, bits: int, group_size: int = -1,
                 bias: bool = True, n_groups: int | None = None):
        super().__init__()
        self.in_features, self.out_features, self.bits, self.group_size = in_features, out_features, bits, group_size
        g_idx = group_index(in_features, group_size)
        n_groups = int(g_idx.max()) + 1 if n_groups is None else n_groups
        self.register_buffer("codes", torch.zeros(out_features, in_features, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, n_groups))
        self.register_buffer("zeros", torch.zeros(out_features, n_groups))
        self.register_buffer("g_idx", g_idx)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._cache: dict[str, tuple[tuple, object]] = {}

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bits: int,
                   group_size: int, g_idx: torch.Tensor | None = None,
                   bias: torch.Tensor | None = None) -> QuantizedLinear:
        """Build from codes (out, in), scales and zeros (out, n_groups), ``g_idx`` (in,), bias (out,)."""
        out_features, in_features = codes.shape
        module = cls(in_features, out_features, bits, group_size, bias is not None, scales.shape[1])
        module.codes.copy_(codes)
        module.scales.copy_(scales)
        module.zeros.copy_(zeros)
        if g_idx is not None:
            module.g_idx.copy_(g_idx)
        if bias is not None:
            module.bias.copy_(bias)
        return module

    def export_spec(self) -> dict:
        """Constructor arguments for :meth:`from_spec`."""
        return {"in_features": self.in_features, "out_features": self.out_features, "bits": self.bits,
                "group_size": self.group_size, "bias": self.bias is not None, "n_groups": self.scales.shape[1]}

    @classmethod
    def from_spec(cls, spec: dict) -> QuantizedLinear:
        """An empty module of the saved shapes."""
        return cls(**spec)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The (out, in) weight this layer computes with, in ``dtype`` (default: the scales' dtype)."""
        return dequantize(self.codes, self.scales, self.zeros, self.g_idx).to(dtype or self.scales.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self._cached("kernel", self._kernel) if self._kernel_applies(x) else None
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if kernel is None:
            return nn.functional.linear(x, self._cached(f"dense:{x.dtype}", lambda: self.dequantize(x.dtype)), bias)
        out = kernel(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        return out if bias is None else out + bias

    def release_cache(self) -> None:
        """Free the dequantized weight and kernel operands; the next forward rebuilds them.

        The compression engine calls this on every block it has finished, so that during
        compression a quantized layer holds only its codes (one byte per weight) instead of
        codes plus a float copy.
        """
        self._cache.clear()

    def _kernel_applies(self, x: torch.Tensor) -> bool:
        return (self.use_kernels and x.dtype == torch.bfloat16 and x.device.type == "cpu"
                and not (torch.is_grad_enabled() and x.requires_grad))

    def _cached(self, key: str, build):
        """``build()``, recomputed only when a buffer was replaced or written in place."""
        version = tuple((id(t), t._version) for t in (self.codes, self.scales, self.zeros, self.g_idx))
        if any(v != version for v, _ in self._cache.values()):
            self._cache.clear()
        if key not in self._cache:
            with torch.no_grad():
                self._cache[key] = (version, build())
        return self._cache[key][1]

    def _kernel(self):
        """A function ``x (M, in) -> (M, out)`` using a torch low-bit CPU kernel, or ``None``."""
        perm = _group_order(self.g_idx, self._group_width())
        if perm is None:
            return None
        codes = self.codes if perm is ... else self.codes[:, perm]
        if self.bits == 4:
            return _int4_kernel(codes, self.scales, self.zeros, self._group_width(), perm)
        if self.bits == 8:
            return _int8_kernel(codes, self.scales, self.zeros, perm)
        return None

    def _group_width(self) -> int:
        return group_width(self.in_features, self.group_size)


def _group_order(g_idx: torch.Tensor, width: int):
    """``...`` if groups are contiguous blocks of ``width`` columns, else the column permutation
    that makes them so, else ``None`` (groups of unequal sizes: no kernel)."""
    expected = torch.arange(g_idx.numel(), dtype=g_idx.dtype) // width
    if torch.equal(g_idx, expected):
        return ...
    perm = torch.argsort(g_idx, stable=True)
    return perm if torch.equal(g_idx[perm], expected) else None


def _int4_kernel(codes, scales, zeros, width, perm):
    out_features, in_features = codes.shape
    kernel_group = next((k for k in _INT4_KERNEL_GROUPS if width % k == 0 and in_features % k == 0), None)
    if kernel_group is None or out_features % 16:
        return None
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    repeat = width // kernel_group  # each quantization group spans `repeat` kernel groups
    s = scales.repeat_interleave(repeat, 1)[:, : in_features // kernel_group]
    z = zeros.repeat_interleave(repeat, 1)[:, : in_features // kernel_group]
    # The kernel computes (q - 8) * scale + offset; ours is scale * (q - zero).
    scale_offset = torch.stack([s.T, (s * (8 - z)).T], dim=-1).contiguous()

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x if perm is ... else x[:, perm]
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.contiguous(), packed, kernel_group,
                                                          scale_offset.to(x.dtype))

    return run


def _int8_kernel(codes, scales, zeros, perm):
    if scales.shape[1] != 1:
        return None
    # W = s * (q - z) = s * (q - 128) + s * (128 - z): a symmetric int8 matrix plus a rank-1
    # term, since per-channel scale and zero are constant along each row.
    weight = (codes.to(torch.int16) - 128).to(torch.int8).contiguous()
    scale, offset = scales[:, 0].contiguous(), scales[:, 0] * (128 - zeros[:, 0])

    def run(x: torch.Tensor) -> torch.Tensor:
        x = x if perm is ... else x[:, perm]
        out = torch._weight_int8pack_mm(x.contiguous(), weight, scale.to(x.dtype))
        return out + x.sum(-1, keepdim=True) * offset.to(x.dtype)

    return run
