"""Helpers for the storage tests: a simple RTN quantizer and a tiny model with 256-wide inputs."""

from __future__ import annotations

import torch
import transformers as T

from netslim.models.adapter import ModelAdapter
from netslim.nn.quantized import QuantizedLinear, group_index


def rtn(weight: torch.Tensor, bits: int, group_size: int, bias: torch.Tensor | None = None) -> QuantizedLinear:
    """Asymmetric min/max round-to-nearest of ``weight`` (out, in) into a QuantizedLinear."""
    out_features, in_features = weight.shape
    g_idx = group_index(in_features, group_size).long()
    n_groups = int(g_idx.max()) + 1
    maxq = (1 << bits) - 1
    low = torch.stack([weight[:, g_idx == g].min(1).values for g in range(n_groups)], 1).clamp_max(0)
    high = torch.stack([weight[:, g_idx == g].max(1).values for g in range(n_groups)], 1).clamp_min(0)
    scales = ((high - low) / maxq).clamp_min(1e-8)
    zeros = (-low / scales).round()
    codes = (weight / scales[:, g_idx] + zeros[:, g_idx]).round().clamp(0, maxq)
    return QuantizedLinear.from_codes(codes.to(torch.uint8), scales, zeros, bits, group_size, None, bias)


def quantize_model(model: torch.nn.Module, bits: int, group_size: int) -> torch.nn.Module:
    """Replace every decoder projection of ``model`` by its RTN-quantized version, in place."""
    adapter = ModelAdapter.from_model(model)
    for i in range(adapter.num_blocks):
        for name, module in adapter.block_linears(i).items():
            parent, _, attr = name.rpartition(".")
            bias = None if module.bias is None else module.bias.detach()
            setattr(model.get_submodule(parent), attr, rtn(module.weight.detach(), bits, group_size, bias))
    return model


def wide_llama(seed: int = 0) -> torch.nn.Module:
    """A tiny Llama whose projections read 256 or 512 inputs, so groups of 128 exist."""
    torch.manual_seed(seed)
    config = T.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=64,
    )
    return T.AutoModelForCausalLM.from_config(config).eval()


def logits(model: torch.nn.Module) -> torch.Tensor:
    """Logits of a fixed batch of random tokens."""
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits
