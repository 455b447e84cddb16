"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE (with a shared expert) and Qwen3-MoE.

Their attention and norms are Llama's; the MLP is a router (``mlp.gate``, kept dense) over
routed experts (``mlp.experts``, fused by ``transformers``, one Linear per projection per
expert once the adapter has unfused them) and, for Qwen2-MoE, a shared expert that every
token passes through (``mlp.shared_expert``, a plain gated MLP; its scalar gate
``mlp.shared_expert_gate`` stays dense).
"""

from netslim.models.families.llama import _LLAMA_PARTS
from netslim.models.registry import register_family
from netslim.models.spec import ExpertsSpec, FamilySpec

_ATTENTION = {k: v for k, v in _LLAMA_PARTS.items() if k not in ("mlp_in", "mlp_out")}

MIXTRAL = register_family(
    FamilySpec(
        name="mixtral",
        model_types=("mixtral",),
        mlp_in=(),
        mlp_out=None,
        experts=ExpertsSpec(path="mlp.experts", count_attr="num_local_experts",
                            intermediate_attr="intermediate_size"),
        **_ATTENTION,
    )
)

QWEN2_MOE = register_family(
    FamilySpec(
        name="qwen2_moe",
        model_types=("qwen2_moe",),
        mlp_in=("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
        mlp_out="mlp.shared_expert.down_proj",
        experts=ExpertsSpec(path="mlp.experts", count_attr="num_experts",
                            intermediate_attr="moe_intermediate_size"),
        intermediate_attr="shared_expert_intermediate_size",
        **_ATTENTION,
    )
)

QWEN3_MOE = register_family(
    FamilySpec(
        name="qwen3_moe",
        model_types=("qwen3_moe",),
        mlp_in=(),
        mlp_out=None,
        experts=ExpertsSpec(path="mlp.experts", count_attr="num_experts",
                            intermediate_attr="moe_intermediate_size"),
        intermediate_attr="moe_intermediate_size",
        **_ATTENTION,
    )
)
