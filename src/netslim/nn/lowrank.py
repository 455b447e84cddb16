"""Factorized and low-rank-compensated Linear modules.

- :class:`FactorizedLinear`: ``in -> r -> out``, two ``nn.Linear`` of ``r * (in + out)``
  weights replacing one of ``in * out`` (made by the ``svd``/``asvd``/``svd_llm`` methods).
- :class:`LowRankCompensated`: ``base(x) + up(down(x))``, a rank-``r`` correction beside any
  compressed module (a pruned ``nn.Linear``, a quantized Linear) (made by ``eora``).

Both are registered module kinds, so :func:`netslim.save` records their ranks and
:func:`netslim.load` rebuilds them before loading the weights.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.export.modules import build_module, module_spec, register_module_kind


@register_module_kind("factorized_linear")
class FactorizedLinear(nn.Module):
    """A Linear map factorized through rank ``rank``: ``up(down(x))``.

    Args:
        in_features: Input width.
        out_features: Output width.
        rank: Inner width ``r``.
        bias: Whether ``up`` carries the original layer's bias.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=bias)

    @classmethod
    def from_factors(cls, up: torch.Tensor, down: torch.Tensor, bias: torch.Tensor | None = None) -> FactorizedLinear:
        """Build from ``up`` (out, r), ``down`` (r, in) and an optional bias (out,)."""
        module = cls(down.shape[1], up.shape[0], up.shape[1], bias=bias is not None)
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
            if bias is not None:
                module.up.bias.copy_(bias)
        return module.to(up.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        """The (out, in) matrix ``up @ down`` this module computes."""
        return self.up.weight @ self.down.weight

    def export_spec(self) -> dict:
        """Constructor arguments for :meth:`from_spec`."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "bias": self.up.bias is not None,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> FactorizedLinear:
        """An empty module of the saved shapes."""
        return cls(spec["in_features"], spec["out_features"], spec["rank"], spec["bias"])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


@register_module_kind("lowrank_compensated")
class LowRankCompensated(nn.Module):
    """A compressed module plus a rank-``rank`` correction: ``base(x) + up(down(x))``.

    Args:
        base: The compressed module (any module mapping ``in_features`` to ``out_features``).
        in_features: Input width.
        out_features: Output width.
        rank: Rank of the correction.
    """

    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int):
        super().__init__()
        self.base = base
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    @classmethod
    def around(cls, base: nn.Module, up: torch.Tensor, down: torch.Tensor) -> LowRankCompensated:
        """Wrap ``base`` with the correction ``up`` (out, r) @ ``down`` (r, in)."""
        module = cls(base, down.shape[1], up.shape[0], up.shape[1])
        with torch.no_grad():
            module.down.weight.copy_(down)
            module.up.weight.copy_(up)
        module.down.to(up.dtype)
        module.up.to(up.dtype)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.up(self.down(x))

    def export_spec(self) -> dict:
        """Shapes, rank, and the spec of the wrapped module (rebuilt first by :meth:`from_spec`)."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "rank": self.rank,
            "base": module_spec(self.base),
        }

    @classmethod
    def from_spec(cls, spec: dict) -> LowRankCompensated:
        """An empty wrapper around an empty base of the saved kind."""
        return cls(build_module(spec["base"]), spec["in_features"], spec["out_features"], spec["rank"])

    def extra_repr(self) -> str:
        return f"rank={self.rank}"
