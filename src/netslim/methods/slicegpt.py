"""SliceGPT: rotate each block's residual stream into its principal basis and slice it.

Ashkboos et al., "SliceGPT: Compress Large Language Models by Deleting Rows and Columns",
ICLR 2024 (https://arxiv.org/abs/2401.15024). Every RMSNorm weight is first fused into the
Linear layers that read it, which makes the network invariant to an orthogonal rotation of
the residual stream. Then, block by block, the signal entering the block, the mid-block
signal (after attention) and the block's output are each rotated by the eigenvectors of
their ``X^T X`` over the calibration tokens, and the least significant directions are
deleted: projections reading the stream lose input columns, projections writing it lose
output rows, and the embeddings and LM head shrink with it. Because consecutive signals use
different bases, each residual connection goes through a shortcut matrix ``Q_a^T Q_b``
(:class:`netslim.models.sliced.SlicedDecoderLayer`). Each basis is computed on the outputs
of the already sliced blocks before it, as in the paper.

``ratio`` is the fraction of the hidden dimension removed, not of the parameters: the
shortcut matrices add ``2 k^2`` parameters per block, and a tied LM head is untied.

Recipe:
    - method: slicegpt
      ratio: 0.25            # fraction of the hidden dimension deleted
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from netslim.data.windows import TokenWindows
from netslim.engine.capture import BlockCall, capture_block_inputs, run_block
from netslim.engine.stats import Stat
from netslim.errors import ConfigError
from netslim.eval.size import count_params
from netslim.methods.base import MethodConfig, ModelShape, Scope
from netslim.methods.registry import register_method
from netslim.models import rotate
from netslim.models.adapter import ModelAdapter
from netslim.ops.rotation import gram, pca_basis, sliced_width


class SliceGPTConfig(MethodConfig):
    """SliceGPT settings.

    Attributes:
        ratio: Fraction of the hidden dimension deleted from every residual signal.
        round_to: The kept width is rounded down to a multiple of this (for fast kernels).
        damp: Fraction of the mean eigenvalue added to ``X^T X`` before the eigensolver.
    """

    method: Literal["slicegpt"] = "slicegpt"
    ratio: float = Field(default=0.25, ge=0.0, lt=1.0)
    round_to: int = Field(default=8, ge=1)
    damp: float = Field(default=0.01, ge=0.0)

    scope: ClassVar[Scope] = Scope.MODEL
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.HESSIAN})

    @model_validator(mode="after")
    def _whole_model(self) -> SliceGPTConfig:
        if self.ignore or self.true_sequential:
            raise ValueError("slicegpt rotates the whole residual stream; ignore and true_sequential do not apply")
        return self

    def preflight(self, shape: ModelShape) -> None:
        """A family that can be rotated, sliced once; afterwards widths are not known in advance."""
        rotate.check_sliceable(shape.adapter)
        if "sliced_decoder_layer" in shape.module_kinds:
            raise ConfigError("slicegpt: the model is already sliced; use one slicegpt stage with a larger ratio")
        super().preflight(shape)
        shape.module_kinds.add("sliced_decoder_layer")
        for layer in shape.layers.values():
            layer.in_features = layer.out_features = None

    def width(self, hidden_size: int) -> int:
        """Width of every residual signal after slicing."""
        return sliced_width(hidden_size, self.ratio, self.round_to)


def _basis(signal: torch.Tensor, cfg: SliceGPTConfig, width: int) -> torch.Tensor:
    """First ``width`` principal directions of ``signal`` (..., d), as (d, width) float64."""
    return pca_basis(gram(signal), cfg.damp)[1][:, :width]


def _project(signal: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    return (signal.double() @ basis).to(signal.dtype)


@torch.no_grad()
def _attend(block: torch.nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """The mid-block signal of every window (block keyword arguments go to attention)."""
    return torch.cat([block.attend(hidden[i : i + 1], **call.kwargs) for i in range(hidden.shape[0])])


def _slice_block(
    adapter: ModelAdapter,
    index: int,
    hidden: torch.Tensor,
    basis_in: torch.Tensor,
    call: BlockCall,
    cfg: SliceGPTConfig,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Slice block ``index`` whose input ``hidden`` is already in ``basis_in``.

    Returns:
        ``(output, basis_out, record)``: the block output in its new basis, that basis, and
        the per-block log entry.
    """
    width = cfg.width(adapter.hidden_size)
    block = rotate.wrap_block(adapter, index, basis_in)
    basis_mid = _basis(_attend(block, hidden, call), cfg, width)
    rotate.rotate_mid(adapter, block, basis_mid)
    output = run_block(block, hidden, call)  # still in the original basis
    basis_out = _basis(output, cfg, width)
    rotate.rotate_output_basis(adapter, block, basis_out)
    dims = {"d_in": basis_in.shape[1], "d_mid": width, "d_out": width}
    params = count_params(block)
    return _project(output, basis_out), basis_out, {**dims, "params": params}


@register_method("slicegpt", SliceGPTConfig)
def slicegpt(adapter: ModelAdapter, calibration: TokenWindows | None, cfg: SliceGPTConfig, log) -> None:
    """Fuse norms, then rotate and slice the embeddings, every block and the LM head.

    Raises:
        UnsupportedModelError: for families whose blocks cannot be rotated exactly.
        ConfigError: without calibration data.
    """
    rotate.check_sliceable(adapter)
    if calibration is None:
        raise ConfigError("slicegpt needs calibration data; pass calibration windows")
    width = cfg.width(adapter.hidden_size)
    rotate.fuse_norms(adapter)
    hidden, calls = capture_block_inputs(adapter, calibration.ids)
    basis = _basis(hidden, cfg, width)
    rotate.rotate_embeddings(adapter, basis)
    hidden = _project(hidden, basis)
    for index in range(adapter.num_blocks):
        hidden, basis, record = _slice_block(adapter, index, hidden, basis, calls[index], cfg)
        log.add(adapter.block_name(index), adapter.blocks[index], "slicegpt", record)
    rotate.rotate_head(adapter, basis)
