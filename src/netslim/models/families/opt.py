"""OPT: separate q/k/v with biases, LayerNorm, ReLU MLP (fc1, fc2), learned positions."""

from netslim.models.registry import register_family
from netslim.models.spec import FamilySpec, NormKind

OPT = register_family(
    FamilySpec(
        name="opt",
        model_types=("opt",),
        layers="model.decoder.layers",
        embeddings=("model.decoder.embed_tokens", "model.decoder.embed_positions"),
        final_norm="model.decoder.final_layer_norm",
        lm_head="lm_head",
        attn_norm="self_attn_layer_norm",
        mlp_norm="final_layer_norm",
        attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attn_out="self_attn.out_proj",
        mlp_in=("fc1",),
        mlp_out="fc2",
        norm_kind=NormKind.LAYERNORM,
        num_kv_heads_attr=None,
        head_dim_attr=None,
        intermediate_attr="ffn_dim",
    )
)
