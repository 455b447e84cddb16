"""Modules of a rotated-and-sliced (SliceGPT) model, rebuilt by :func:`netslim.load`.

After slicing, each decoder block reads a residual stream of one width and writes one of
another, so the block's residual connections go through shortcut matrices. Three module
kinds hold what ``transformers`` cannot build from the model's config:

- :class:`UnscaledRMSNorm`: RMSNorm without a weight (its weight was fused into the next
  Linear), normalizing by the *original* width so a sliced signal keeps its scale.
- :class:`ResizedEmbedding`: the token embedding with fewer columns.
- :class:`SlicedDecoderLayer`: a sequential pre-norm block (``x + attn(norm(x))``, then
  ``x + mlp(norm(x))``) whose two residual paths are multiplied by shortcut matrices.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.export.modules import build_module, module_spec, register_module_kind


@register_module_kind("unscaled_rmsnorm")
class UnscaledRMSNorm(nn.Module):
    """``x / sqrt(sum(x^2) / mean_dim + eps)``, with no weight.

    Args:
        mean_dim: The width of the unsliced signal; dividing by it rather than by the
            current width keeps the norm of a sliced signal equal to the full one's, up to
            the energy of the dropped directions.
        eps: The original norm's epsilon.
    """

    def __init__(self, mean_dim: int, eps: float):
        super().__init__()
        self.mean_dim = mean_dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        scale = torch.rsqrt(x32.square().sum(-1, keepdim=True) / self.mean_dim + self.eps)
        return (x32 * scale).to(x.dtype)

    def export_spec(self) -> dict:
        """Constructor arguments."""
        return {"mean_dim": self.mean_dim, "eps": self.eps}

    @classmethod
    def from_spec(cls, spec: dict) -> UnscaledRMSNorm:
        """Rebuild from :meth:`export_spec`."""
        return cls(spec["mean_dim"], spec["eps"])

    def extra_repr(self) -> str:
        return f"mean_dim={self.mean_dim}, eps={self.eps}"


@register_module_kind("embedding")
class ResizedEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose width differs from the config's hidden size."""

    def export_spec(self) -> dict:
        """Constructor arguments."""
        return {
            "num_embeddings": self.num_embeddings,
            "embedding_dim": self.embedding_dim,
            "padding_idx": self.padding_idx,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> ResizedEmbedding:
        """An empty embedding of the saved shape."""
        return cls(spec["num_embeddings"], spec["embedding_dim"], padding_idx=spec["padding_idx"])

    @classmethod
    def from_weight(cls, weight: torch.Tensor, padding_idx: int | None) -> ResizedEmbedding:
        """An embedding holding ``weight`` (vocab, width)."""
        return cls(weight.shape[0], weight.shape[1], padding_idx=padding_idx, _weight=weight)


@register_module_kind("sliced_decoder_layer")
class SlicedDecoderLayer(nn.Module):
    """A decoder block with shortcut matrices on its residual paths.

    It adopts the children of the wrapped ``transformers`` block under their own names, so
    state-dict keys (``...layers.3.self_attn.q_proj.weight``) stay those of the original
    model, plus ``attn_shortcut`` (d_in, d_mid) and ``mlp_shortcut`` (d_mid, d_out).

    Args:
        layer: The original block; its children and ``attention_type`` (if any) are adopted.
        parts: Child paths of the attention norm, attention, MLP norm and MLP.
        attn_shortcut: (d_in, d_mid) matrix taking the block input to the mid-block basis.
        mlp_shortcut: (d_mid, d_out) matrix taking the mid-block signal to the output basis.
    """

    def __init__(self, layer: nn.Module, parts: list[str], attn_shortcut: torch.Tensor, mlp_shortcut: torch.Tensor):
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        if hasattr(layer, "attention_type"):
            self.attention_type = layer.attention_type
        self.parts = list(parts)
        self.attn_shortcut = nn.Parameter(attn_shortcut)
        self.mlp_shortcut = nn.Parameter(mlp_shortcut)

    @property
    def mid_reader(self) -> str:
        """Path of the child that reads the mid-block signal (the MLP norm)."""
        return self.parts[2]

    def attend(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """The mid-block signal: shortcut(x) + attention(norm(x)), shape (..., d_mid)."""
        attn_norm, attn, _, _ = (self.get_submodule(p) for p in self.parts)
        out = attn(hidden_states=attn_norm(hidden_states), **kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return hidden_states @ self.attn_shortcut + out

    def feed_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The block output: shortcut(x) + mlp(norm(x)), shape (..., d_out)."""
        _, _, mlp_norm, mlp = (self.get_submodule(p) for p in self.parts)
        return hidden_states @ self.mlp_shortcut + mlp(mlp_norm(hidden_states))

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        """Same call as the ``transformers`` block (keyword arguments go to attention)."""
        return self.feed_forward(self.attend(hidden_states, **kwargs))

    def export_spec(self) -> dict:
        """Child paths, shortcut shapes, and the specs of the Linear and custom modules inside."""
        children: dict[str, dict] = {}
        for name, module in self.named_modules():
            inside = any(name.startswith(f"{outer}.") for outer in children)
            if name and not inside and (hasattr(type(module), "netslim_kind") or isinstance(module, nn.Linear)):
                children[name] = module_spec(module)
        shapes = {k: list(getattr(self, k).shape) for k in ("attn_shortcut", "mlp_shortcut")}
        return {"parts": self.parts, **shapes, "children": children}

    @classmethod
    def wrap(cls, layer: nn.Module, spec: dict) -> SlicedDecoderLayer:
        """Wrap the block the config built: resize its children, add empty shortcuts."""
        dtype = next(layer.parameters()).dtype
        for name, child_spec in spec["children"].items():
            parent, _, attr = name.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, attr, build_module(child_spec))
        empty = [torch.empty(spec[k], dtype=dtype) for k in ("attn_shortcut", "mlp_shortcut")]
        return cls(layer, spec["parts"], *empty)
