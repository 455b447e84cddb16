"""Model adapter: a model plus its family spec, resolving paths to modules.

Example:
    >>> adapter = ModelAdapter.from_model(model)
    >>> for i, block in enumerate(adapter.blocks):
    ...     for name, module in adapter.block_linears(i).items():
    ...         ...
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

from netslim.errors import UnsupportedModelError
from netslim.models import families as _families  # noqa: F401  (registers the families)
from netslim.models.experts import unfuse_experts
from netslim.models.registry import family_for_model_type
from netslim.models.spec import FamilySpec, stores_transposed


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """``root.get_submodule(path)`` with an error that names the family path that failed."""
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise UnsupportedModelError(
            f"{type(root).__name__} has no submodule '{path}'; the family spec does not "
            "match this model's layout"
        ) from None


@dataclass
class ModelAdapter:
    """Resolves a :class:`FamilySpec` against one model instance."""

    model: nn.Module
    spec: FamilySpec

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelAdapter:
        """Build the adapter for a ``transformers`` model from its ``config.model_type``.

        A mixture-of-experts model has its fused experts replaced in place by per-expert
        Linears (:func:`netslim.models.experts.unfuse_experts`: the same function, to float
        rounding), once; every adapter of the model then sees each expert's projections.

        Raises:
            UnsupportedModelError: if the model has no config, its family is unknown, or its
                experts are laid out in a way netslim does not handle.
        """
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} has no Hugging Face config; LLM methods need a "
                "transformers causal LM"
            )
        adapter = cls(model, family_for_model_type(model_type))
        if adapter.spec.experts is not None:
            unfuse_experts(adapter.blocks, adapter.spec.experts, config)
        return adapter

    @property
    def config(self):
        """The model's Hugging Face config."""
        return self.model.config

    @cached_property
    def blocks(self) -> nn.ModuleList:
        """The decoder blocks in order."""
        return get_submodule(self.model, self.spec.layers)

    @property
    def num_blocks(self) -> int:
        """Number of decoder blocks."""
        return len(self.blocks)

    def block_name(self, index: int) -> str:
        """Full module name of block ``index``."""
        return f"{self.spec.layers}.{index}"

    @property
    def num_experts(self) -> int:
        """Routed experts per block (0 for a dense family)."""
        experts = self.spec.experts
        return int(getattr(self.config, experts.count_attr)) if experts else 0

    def block_linears(self, index: int) -> dict[str, nn.Module]:
        """Full name -> projection module of block ``index``, in forward order."""
        block = self.blocks[index]
        prefix = self.block_name(index)
        return {f"{prefix}.{p}": get_submodule(block, p) for p in self.spec.linears(self.num_experts)}

    def block_stages(self, index: int) -> list[list[list[str]]]:
        """Full names of block ``index``'s projections in groups that share one input, the
        groups in the stages true-sequential calibration follows (:meth:`FamilySpec.stages`)."""
        prefix = self.block_name(index)
        return [[[f"{prefix}.{p}" for p in group] for group in stage] for stage in self.spec.stages(self.num_experts)]

    def block_input_groups(self, index: int) -> list[list[str]]:
        """Full names of block ``index``'s projections grouped by shared input, in forward order."""
        return [group for stage in self.block_stages(index) for group in stage]

    def block_part(self, index: int, path: str) -> nn.Module:
        """A block-relative submodule (a norm, a projection) of block ``index``."""
        return get_submodule(self.blocks[index], path)

    @property
    def embeddings(self) -> list[nn.Module]:
        """Token (and position) embeddings."""
        return [get_submodule(self.model, p) for p in self.spec.embeddings]

    @property
    def final_norm(self) -> nn.Module:
        """The norm after the last block."""
        return get_submodule(self.model, self.spec.final_norm)

    @property
    def lm_head(self) -> nn.Module:
        """The output projection."""
        return get_submodule(self.model, self.spec.lm_head)

    @property
    def num_heads(self) -> int:
        """Number of query heads."""
        return int(getattr(self.config, self.spec.num_heads_attr))

    def _optional_size(self, attr: str | None) -> int | None:
        """The config's size ``attr``; ``None`` if the family names none or the config leaves it unset."""
        value = getattr(self.config, attr, None) if attr else None
        return int(value) if value else None

    @property
    def num_kv_heads(self) -> int:
        """Number of key-value heads (equals query heads without grouped-query attention)."""
        value = self._optional_size(self.spec.num_kv_heads_attr)
        return self.num_heads if value is None else value

    @property
    def hidden_size(self) -> int:
        """Width of the residual stream."""
        return int(getattr(self.config, self.spec.hidden_attr))

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        value = self._optional_size(self.spec.head_dim_attr)
        return self.hidden_size // self.num_heads if value is None else value

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter."""
        return next(self.model.parameters()).device


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The weight of a projection as an (out_features, in_features) view.

    ``nn.Linear`` stores (out, in); GPT-2's ``Conv1D`` stores (in, out)
    (:func:`~netslim.models.spec.stores_transposed`). Writing into the returned view
    (``w.copy_(...)``, ``w.mul_(mask)``) writes the module's weight.
    """
    weight = module.weight.data
    if stores_transposed(module):
        return weight.t()
    if isinstance(module, nn.Linear) or weight.dim() == 2:
        return weight
    raise UnsupportedModelError(f"cannot read a 2-D weight from {type(module).__name__}")
