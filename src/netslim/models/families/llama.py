"""Llama-style decoders: Llama, Mistral, Qwen2/Qwen3 and the Gemma generations.

Paths follow ``transformers``' ``LlamaForCausalLM`` and its derivatives. Gemma scales its
RMSNorm by ``1 + w`` and (Gemma 2/3) wraps attention and MLP in extra post-norms; those facts
are data here so that methods that fold norms into weights can read them.
"""

from netslim.models.registry import register_family
from netslim.models.spec import FamilySpec

_LLAMA_PARTS = dict(
    layers="model.layers",
    embeddings=("model.embed_tokens",),
    final_norm="model.norm",
    lm_head="lm_head",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    attn_in=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attn_out="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
)

LLAMA = register_family(
    FamilySpec(
        name="llama",
        model_types=("llama", "mistral", "qwen2", "qwen3"),
        **_LLAMA_PARTS,
    )
)

GEMMA = register_family(
    FamilySpec(
        name="gemma",
        model_types=("gemma",),
        norm_weight_offset=1.0,
        bos_per_window=True,
        **_LLAMA_PARTS,
    )
)

GEMMA2 = register_family(
    FamilySpec(
        name="gemma2",
        model_types=("gemma2", "gemma3_text"),
        norm_weight_offset=1.0,
        bos_per_window=True,
        post_attn_norm="post_attention_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
        **{**_LLAMA_PARTS, "mlp_norm": "pre_feedforward_layernorm"},
    )
)
