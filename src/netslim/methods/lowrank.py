"""Low-rank factorization: plain SVD, activation-aware SVD, truncation-aware whitening SVD.

Papers:
    - ASVD: Yuan et al., "ASVD: Activation-aware Singular Value Decomposition for Compressing
      Large Language Models", 2023 (https://arxiv.org/abs/2312.05821).
    - SVD-LLM: Wang et al., "SVD-LLM: Truncation-aware Singular Value Decomposition for Large
      Language Model Compression", 2024 (https://arxiv.org/abs/2403.07378).

Each projection ``W`` (out, in) becomes a :class:`~netslim.nn.lowrank.FactorizedLinear`
``in -> r -> out``. The three methods differ only in the space the SVD is truncated in
(:mod:`netslim.ops.lowrank`): the weight itself (``svd``), the weight with input channels
scaled by their activation magnitude (``asvd``), or the weight times the Cholesky factor of
the input Gram matrix (``svd_llm``, where each dropped singular value squared is exactly the
output error it causes on the calibration data).

``ratio`` is the fraction of the targeted matrices' parameters to remove. ``allocation:
uniform`` gives every matrix that ratio; ``allocation: sensitivity`` first sweeps the whole
model to read every matrix's spectrum (in the method's own space) and chooses ranks globally
(:func:`netslim.ops.rank_allocation.sensitivity_ranks`). A matrix is never factorized at a rank
where its factors would be as large as the dense matrix.

Recipe:
    - method: svd_llm
      ratio: 0.2                 # remove 20% of the decoder's projection parameters
      allocation: sensitivity    # or uniform
"""

from __future__ import annotations

import difflib
from typing import ClassVar, Literal

import torch
from pydantic import Field

from netslim.engine.stats import LayerStats, Stat
from netslim.errors import ConfigError
from netslim.methods.base import Handler, LayerView, MethodConfig, ModelShape, Sweep
from netslim.methods.registry import register_method
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.nn.lowrank import FactorizedLinear
from netslim.ops.lowrank import (
    Factors,
    asvd_scale,
    cholesky_with_fallback,
    diagonal_factors,
    factorized_params,
    svd_factors,
    whitened_factors,
)
from netslim.ops.rank_allocation import MatrixSpectrum, sensitivity_ranks, uniform_rank


class LowRankConfig(MethodConfig):
    """Settings shared by ``svd``, ``asvd`` and ``svd_llm``.

    Attributes:
        ratio: Fraction of the targeted matrices' parameters to remove, in (0, 1).
        allocation: ``uniform`` (every matrix loses ``ratio``) or ``sensitivity`` (ranks
            chosen globally from the spectra so the total loses ``ratio``).
        ranks: Explicit rank per full module name (a module absent from it stays dense).
            Filled in by the planning sweep for ``allocation: sensitivity``; may also be
            given by hand, which overrides ``ratio``.
    """

    ratio: float = Field(default=0.2, gt=0.0, lt=1.0)
    allocation: Literal["uniform", "sensitivity"] = "uniform"
    ranks: dict[str, int] | None = None

    def rank_for(self, name: str, out_features: int, in_features: int) -> int | None:
        """The rank of module ``name``, or ``None`` to keep it dense."""
        if self.ranks is not None:
            return self.ranks.get(name)
        return uniform_rank(out_features, in_features, 1.0 - self.ratio)

    def produces(self) -> str:
        """Factorized layers."""
        return "factorized_linear"

    def preflight(self, shape: ModelShape) -> None:
        """Hand-given ``ranks`` must name projections, each within its smaller side."""
        if self.ranks is not None:
            sizes = {n: (s.out_features, s.in_features) for n, s in shape.layers.items()}
            _check_ranks(sizes, self.ranks)
        super().preflight(shape)

    def factors(self, weight: torch.Tensor, stats: LayerStats | None, rank: int) -> tuple[Factors, dict]:
        """Rank-``rank`` factors of ``weight`` (out, in) and report fields; per method."""
        raise NotImplementedError


class SVDConfig(LowRankConfig):
    """Plain truncated SVD of each weight (data-free)."""

    method: Literal["svd"] = "svd"

    def factors(self, weight, stats, rank):
        return svd_factors(weight, rank), {}


class ASVDConfig(LowRankConfig):
    """Activation-aware SVD.

    Attributes:
        alpha: Exponent of the activation magnitude in the channel scale (0.5 in the paper).
            The magnitude used is each input channel's root mean square over the
            calibration tokens.
    """

    method: Literal["asvd"] = "asvd"
    alpha: float = Field(default=0.5, ge=0.0, le=2.0)
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})

    def factors(self, weight, stats, rank):
        scale = asvd_scale(stats.act_sq_mean.sqrt().to(weight.device), self.alpha)
        return diagonal_factors(weight, rank, scale), {}


class SVDLLMConfig(LowRankConfig):
    """Truncation-aware whitening SVD (SVD-LLM).

    Attributes:
        damp: Relative diagonal damping of ``X^T X`` (a fraction of its mean diagonal)
            before its Cholesky factorization. If that fails, 10x, 100x, 1000x the damping,
            then fp64, then a diagonal factor are tried; each layer's report records which
            (``whitening_fallback``, ``whitening_damping``).
    """

    method: Literal["svd_llm"] = "svd_llm"
    damp: float = Field(default=1e-6, ge=0.0, lt=1.0)
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})

    def factors(self, weight, stats, rank):
        whitening = cholesky_with_fallback(stats.hessian.to(weight.device), self.damp)
        return whitened_factors(weight, rank, whitening), whitening.describe()


def _check_ranks(shapes: dict[str, tuple[int | None, int | None]], ranks: dict[str, int]) -> None:
    """Every name a block projection, every rank in ``1 .. min(out, in)`` (where the sizes are
    known); else a one-line error. ``shapes``: projection name -> (out, in)."""
    for name, rank in ranks.items():
        if name not in shapes:
            close = difflib.get_close_matches(name, list(shapes), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f" (e.g. '{next(iter(shapes))}')"
            raise ConfigError(f"ranks: '{name}' is not a projection of this model's blocks{hint}")
        if None in shapes[name]:
            continue
        if not 1 <= rank <= min(shapes[name]):
            raise ConfigError(f"ranks: '{name}' has rank {rank}; use 1 to {min(shapes[name])} (its smaller side)")


class LowRankHandler(Handler):
    """Plans the ranks (``allocation: sensitivity``), then factorizes each projection."""

    def plan(self, cfg: LowRankConfig, adapter: ModelAdapter, sweep: Sweep | None) -> LowRankConfig:
        """For ``allocation: sensitivity``, sweep the model for every spectrum and fix the ranks.

        Raises:
            ConfigError: if hand-given ``ranks`` name a module that is not a block projection,
                or a rank outside ``1 .. min(out, in)``.
        """
        if cfg.ranks is not None:
            _check_ranks({n: tuple(linear_weight(m).shape) for i in range(adapter.num_blocks)
                          for n, m in adapter.block_linears(i).items()}, cfg.ranks)
            return cfg
        if cfg.allocation == "uniform":
            return cfg
        spectra: dict[str, MatrixSpectrum] = {}
        for index, stats in _sweep(cfg, adapter, sweep):
            for name, module in adapter.block_linears(index).items():
                if not cfg.ignores(name):
                    weight = linear_weight(module)
                    spectrum = cfg.factors(weight, stats.get(name), 0)[0].spectrum
                    spectra[name] = MatrixSpectrum(weight.shape[0], weight.shape[1], spectrum)
        ranks = sensitivity_ranks(spectra, cfg.ratio)
        return cfg.model_copy(update={"ranks": {name: r for name, r in ranks.items() if r is not None}})

    @staticmethod
    def act_layer(layer: LayerView, stats: LayerStats | None, cfg: LowRankConfig) -> dict:
        """Replace ``layer`` by a :class:`FactorizedLinear` at its allocated rank."""
        return factorize(layer, stats, cfg)


def _sweep(cfg: LowRankConfig, adapter: ModelAdapter, sweep: Sweep | None):
    """(block index, {layer name: stats}) for the spectra (no statistics for plain SVD)."""
    if not cfg.needs:
        return ((index, {}) for index in range(adapter.num_blocks))
    if sweep is None:
        raise ConfigError(f"method {cfg.method} needs calibration data; pass calibration windows")
    return ((index, stats.layers) for index, stats in sweep(cfg.needs))


def factorize(layer: LayerView, stats: LayerStats | None, cfg: LowRankConfig) -> dict:
    """Replace ``layer`` by a :class:`FactorizedLinear` at its allocated rank."""
    weight = layer.weight
    out_features, in_features = weight.shape
    rank = cfg.rank_for(layer.name, out_features, in_features)
    if rank is None:
        return {"rank": None}
    factors, extra = cfg.factors(weight, stats, rank)
    bias = getattr(layer.module, "bias", None)
    layer.replace(FactorizedLinear.from_factors(factors.up, factors.down, None if bias is None else bias.data))
    return {
        "rank": rank,
        "params_dense": out_features * in_features,
        "params_factorized": factorized_params(out_features, in_features, rank),
        "dropped_energy_share": factors.dropped_energy() / max(float(factors.spectrum.double().square().sum()), 1e-30),
        **extra,
    }


for _name, _cls in (("svd", SVDConfig), ("asvd", ASVDConfig), ("svd_llm", SVDLLMConfig)):
    register_method(_name, _cls)(LowRankHandler)
