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
of the already sliced blocks before it, as in the paper: the engine's pass feeds each block
the outputs of the sliced blocks before it, and gathers the Gram matrices of its signals
(``Stat.GRAM``: the block input, the input of the MLP norm, the block output).

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

from netslim.engine.records import RunLog
from netslim.engine.stats import Stat
from netslim.engine.step import INPUT, OUTPUT, BlockStep
from netslim.errors import ConfigError
from netslim.eval.size import count_params
from netslim.methods.base import Handler, MethodConfig, ModelShape, Scope
from netslim.methods.registry import register_method
from netslim.models import rotate
from netslim.models.adapter import ModelAdapter
from netslim.ops.rotation import pca_basis, sliced_width

GRAM = frozenset({Stat.GRAM})


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

    scope: ClassVar[Scope] = Scope.BLOCK
    needs: ClassVar[frozenset[Stat]] = GRAM

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


def _basis(xtx: torch.Tensor, cfg: SliceGPTConfig, width: int) -> torch.Tensor:
    """First ``width`` principal directions of a signal with Gram matrix ``xtx``, (d, width) float64."""
    return pca_basis(xtx, cfg.damp)[1][:, :width]


@register_method("slicegpt", SliceGPTConfig)
class SliceGPTHandler(Handler):
    """Start: fuse the norms and rotate the embeddings into the basis of block 0's input;
    act: rotate and slice each block; finish: rotate the LM head into the last basis."""

    def start(self, cfg: SliceGPTConfig, step: BlockStep) -> bool:
        """Fuse every norm into its readers, then rotate and slice the embeddings.

        Raises:
            UnsupportedModelError: for families whose blocks cannot be rotated exactly.
        """
        adapter = step.adapter
        rotate.check_sliceable(adapter)
        self.width = cfg.width(adapter.hidden_size)
        rotate.fuse_norms(adapter)
        self.basis = _basis(step.signals({INPUT: GRAM})[INPUT].gram, cfg, self.width)
        rotate.rotate_embeddings(adapter, self.basis)
        return True

    def act_block(self, cfg: SliceGPTConfig, step: BlockStep) -> None:
        """Wrap the block with shortcuts, then rotate its mid-block signal and its output into
        their principal bases, each measured with the rotations before it in place."""
        adapter, width = step.adapter, self.width
        d_in = self.basis.shape[1]
        block = rotate.wrap_block(adapter, step.index, self.basis)
        mid = block.mid_reader
        rotate.rotate_mid(adapter, block, _basis(step.signals({mid: GRAM})[mid].gram, cfg, width))
        self.basis = _basis(step.signals({OUTPUT: GRAM})[OUTPUT].gram, cfg, width)
        rotate.rotate_output_basis(adapter, block, self.basis)
        step.record(step.name, block, cfg.method, {"d_in": d_in, "d_mid": width, "d_out": width,
                                                   "params": count_params(block)})

    def finish(self, cfg: SliceGPTConfig, adapter: ModelAdapter, log: RunLog) -> None:
        """The LM head reads the last block's output basis."""
        rotate.rotate_head(adapter, self.basis)
