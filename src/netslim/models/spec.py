"""Declarative description of a model family: where its blocks, projections and norms live.

Methods never hard-code attribute paths such as ``model.model.layers``; they ask a
:class:`ModelAdapter`, which reads a :class:`FamilySpec`. A family is one small file of data
under ``netslim/models/families/``; registering it makes every method work on it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# Projection classes that store their weight as (in, out): transformers' ``Conv1D`` (GPT-2).
TRANSPOSED_CLASSES = frozenset({"Conv1D"})


def stores_transposed(module: object) -> bool:
    """Whether a projection module keeps its weight as (in, out) rather than ``nn.Linear``'s (out, in).

    The one transposed-weight rule: :func:`netslim.models.adapter.linear_weight` and the
    training callbacks read weights through it, and a family's ``transposed_weights`` states
    it for the family's projections (checked by the registry tests). The class is matched by
    name so that ``transformers`` need not be imported.
    """
    return type(module).__name__ in TRANSPOSED_CLASSES


@dataclass(frozen=True)
class ExpertsSpec:
    """Where a mixture-of-experts family keeps its routed experts (Mixtral, Qwen2-MoE, Qwen3-MoE).

    ``transformers`` stores a block's experts fused, as 3-D parameters; the adapter replaces
    that module by :class:`netslim.models.experts.RoutedExperts`, one gated MLP per expert
    with ``gate_proj``, ``up_proj`` and ``down_proj`` Linears, so that each expert's
    projections are compressed, calibrated on the tokens routed to it, and recorded like any
    other layer. The router stays as it is (dense).

    Attributes:
        path: Block-relative path of the experts module (``mlp.experts``).
        count_attr: Config attribute holding the number of routed experts.
        intermediate_attr: Config attribute holding one expert's MLP width.
    """

    path: str
    count_attr: str
    intermediate_attr: str

    def expert_paths(self, num_experts: int) -> tuple[tuple[tuple[str, ...], tuple[str]], ...]:
        """Per expert, the block-relative paths of its input projections (gate, up) and of its output one."""
        return tuple(((f"{self.path}.{e}.gate_proj", f"{self.path}.{e}.up_proj"), (f"{self.path}.{e}.down_proj",))
                     for e in range(num_experts))


class NormKind(str, enum.Enum):
    """Which normalization a family uses before attention and MLP."""

    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


@dataclass(frozen=True)
class FamilySpec:
    """Where a decoder family keeps each part. Block-relative paths are relative to one block.

    Attributes:
        name: Short family name used in messages and reports.
        model_types: Hugging Face ``config.model_type`` values this spec covers.
        layers: Path from the top model to the ``nn.ModuleList`` of decoder blocks.
        embeddings: Paths of the token (and learned position) embeddings.
        final_norm: Path of the norm applied after the last block.
        lm_head: Path of the output projection.
        attn_norm: Block-relative path of the norm before attention.
        mlp_norm: Block-relative path of the norm before the MLP.
        post_attn_norm / post_mlp_norm: Norms applied to the attention / MLP output before
            the residual addition (Gemma 2/3 "sandwich" norms), or ``None``.
        attn_in: Block-relative paths of the projections reading the attention input
            (q, k, v in that order; a single fused projection for GPT-2).
        attn_out: Block-relative path of the attention output projection.
        mlp_in: Block-relative paths of the projections reading the MLP input
            (gate then up for gated MLPs); for a mixture of experts, those of its shared
            (always active) expert, or none.
        mlp_out: Block-relative path of the MLP output projection (of the shared expert of a
            mixture of experts; ``None`` if it has none).
        experts: The routed experts of a mixture-of-experts family, or ``None``.
        norm_kind: RMSNorm or LayerNorm.
        norm_weight_offset: Added to a norm's weight at run time (Gemma's ``1 + w``).
        fused_qkv: Whether q, k and v are one projection (GPT-2 ``c_attn``).
        transposed_weights: Whether projections store weights as (in, out) (GPT-2 ``Conv1D``,
            see :func:`stores_transposed`); structural methods refuse such families.
        parallel_blocks: Whether attention and MLP read the same normed input in parallel.
        bos_per_window: Whether every evaluation window must start with BOS (Gemma).
        num_heads_attr / num_kv_heads_attr / head_dim_attr / hidden_attr / intermediate_attr:
            Names of the config attributes holding those sizes.
    """

    name: str
    model_types: tuple[str, ...]
    layers: str
    embeddings: tuple[str, ...]
    final_norm: str
    lm_head: str
    attn_norm: str
    mlp_norm: str
    attn_in: tuple[str, ...]
    attn_out: str
    mlp_in: tuple[str, ...]
    mlp_out: str | None
    experts: ExpertsSpec | None = None
    post_attn_norm: str | None = None
    post_mlp_norm: str | None = None
    norm_kind: NormKind = NormKind.RMSNORM
    norm_weight_offset: float = 0.0
    fused_qkv: bool = False
    transposed_weights: bool = False
    parallel_blocks: bool = False
    bos_per_window: bool = False
    num_heads_attr: str = "num_attention_heads"
    num_kv_heads_attr: str | None = "num_key_value_heads"
    head_dim_attr: str | None = "head_dim"
    hidden_attr: str = "hidden_size"
    intermediate_attr: str = "intermediate_size"

    def stages(self, num_experts: int = 0) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """Block-relative Linear paths in groups that share one input, the groups in stages.

        Layers of one group read the same activations, so their calibration statistics are
        gathered once. A stage's groups read inputs that no other group of the stage changes
        (q/k/v; o; gate/up; down), so true-sequential calibration gathers a stage's statistics
        in one forward; stages follow the order in which a block computes them. Each of the
        ``num_experts`` routed experts adds its own group (its routed tokens) to the MLP's
        input and output stages.
        """
        experts = self.experts.expert_paths(num_experts) if self.experts else ()
        mlp_in = tuple(g for g in (self.mlp_in, *(e[0] for e in experts)) if g)
        mlp_out = tuple(g for g in ((self.mlp_out,) if self.mlp_out else (), *(e[1] for e in experts)) if g)
        return tuple(s for s in ((self.attn_in,), ((self.attn_out,),), mlp_in, mlp_out) if s)

    def input_groups(self, num_experts: int = 0) -> tuple[tuple[str, ...], ...]:
        """The groups of :meth:`stages`, in forward order."""
        return tuple(g for stage in self.stages(num_experts) for g in stage)

    def linears(self, num_experts: int = 0) -> tuple[str, ...]:
        """All block-relative projection paths in forward order."""
        return tuple(p for group in self.input_groups(num_experts) for p in group)
