"""GPT-2: fused q/k/v in one ``Conv1D`` (weights stored as (in, out)), LayerNorm, GELU MLP."""

from netslim.models.registry import register_family
from netslim.models.spec import FamilySpec, NormKind

GPT2 = register_family(
    FamilySpec(
        name="gpt2",
        model_types=("gpt2",),
        layers="transformer.h",
        embeddings=("transformer.wte", "transformer.wpe"),
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        attn_in=("attn.c_attn",),
        attn_out="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        norm_kind=NormKind.LAYERNORM,
        fused_qkv=True,
        transposed_weights=True,
        num_heads_attr="n_head",
        num_kv_heads_attr=None,
        head_dim_attr=None,
        hidden_attr="n_embd",
        intermediate_attr="n_inner",
    )
)
