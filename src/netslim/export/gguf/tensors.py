"""Which model tensors become which GGUF tensors, and the q/k row order llama.cpp expects.

Names come from gguf's own table (``gguf.get_tensor_name_map``), keyed by the Hugging Face
module path: ``model.layers.3.self_attn.q_proj`` -> ``blk.3.attn_q`` (+ ``.weight``/``.bias``),
``model.embed_tokens`` -> ``token_embd``, ``lm_head`` -> ``output`` (left out when tied to the
embedding), ``model.norm`` -> ``output_norm``.

Rotary layout: Hugging Face Llama code rotates each head's channel ``j`` with channel
``j + head_dim / 2`` ("rotate half"); llama.cpp's ``llama`` and ``deci`` architectures rotate
neighbouring channels ``(2j, 2j + 1)``. The same attention therefore needs each head's q and
k rows reordered: new row ``2j`` is old row ``j`` and new row ``2j + 1`` is old row
``j + head_dim / 2`` (:func:`interleave_rotary_rows`; transformers' GGUF loader undoes it).
It applies to the weight's rows and the bias, and for a quantized layer to the rows of its
codes, scales and zeros, so the grid stays exact. ``qwen2`` rotates halves in llama.cpp too
(NEOX rope) and is written unpermuted.

Every persistent tensor of the model must land somewhere: :func:`plan_tensors` fails with
the first one that has no GGUF counterpart, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from netslim.errors import ConfigError
from netslim.models.adapter import ModelAdapter, get_submodule
from netslim.nn.quantized import QuantizedLinear

# GGUF architectures whose rope pairs neighbouring channels (q/k rows are interleaved).
INTERLEAVED_ROPE_ARCHS = frozenset({"llama", "deci"})


@dataclass
class TensorSource:
    """One GGUF tensor and where its values come from.

    Attributes:
        gguf_name: e.g. ``blk.0.attn_q.weight``.
        hf_name: the model's parameter (or quantized module) name.
        kind: ``weight`` (2-D), ``embedding``, ``norm`` or ``bias`` (1-D, always F32).
        tensor: the float values (rows permuted already), or ``None`` for a quantized layer.
        quantized: the quantized layer, or ``None``.
        rope_heads: heads whose rows are to be interleaved (quantized layers), else ``None``.
    """

    gguf_name: str
    hf_name: str
    kind: str
    tensor: torch.Tensor | None = None
    quantized: QuantizedLinear | None = None
    rope_heads: int | None = None


def interleave_rotary_rows(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from rotate-half pairs ``(j, j + d/2)`` to neighbouring pairs ``(2j, 2j+1)``."""
    rows = t.shape[0]
    if rows % n_heads or (rows // n_heads) % 2:
        raise ConfigError(f"cannot interleave {rows} rows as {n_heads} rotary heads of even width")
    half = rows // n_heads // 2
    return t.reshape(n_heads, 2, half, *t.shape[1:]).transpose(1, 2).reshape(t.shape)


def _gguf_name(name_map, module_name: str) -> str:
    name = name_map.get_name(module_name)
    if name is None:
        raise ConfigError(f"'{module_name}' has no GGUF tensor name; it cannot be exported to GGUF")
    return name


def plan_tensors(adapter: ModelAdapter, arch: str, heads: list[tuple[int, int]]) -> list[TensorSource]:
    """Every GGUF tensor of the model, in file order, with q/k rows interleaved where ``arch`` needs it.

    Args:
        adapter: The model.
        arch: The GGUF architecture name (``llama``, ``deci``, ``qwen2``).
        heads: (query heads, key-value heads) per block.

    Raises:
        ConfigError: if a persistent tensor of the model has no GGUF counterpart.
    """
    import gguf  # noqa: PLC0415

    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_id, adapter.num_blocks)
    model, spec = adapter.model, adapter.spec
    sources: list[TensorSource] = []
    embed_name = spec.embeddings[0]
    embedding = get_submodule(model, embed_name)
    sources.append(TensorSource(f"{_gguf_name(name_map, embed_name)}.weight", f"{embed_name}.weight", "embedding",
                                embedding.weight.data))
    interleave = arch in INTERLEAVED_ROPE_ARCHS
    for i in range(adapter.num_blocks):
        prefix = adapter.block_name(i)
        n_q, n_kv = heads[i]
        rope = {spec.attn_in[0]: n_q, spec.attn_in[1]: n_kv} if interleave else {}
        for path in (spec.attn_norm, spec.mlp_norm):
            norm = adapter.block_part(i, path)
            sources.append(TensorSource(f"{_gguf_name(name_map, f'{prefix}.{path}')}.weight",
                                        f"{prefix}.{path}.weight", "norm", norm.weight.data))
        for path in spec.linears():
            sources.extend(_linear_sources(adapter.block_part(i, path), f"{prefix}.{path}",
                                           _gguf_name(name_map, f"{prefix}.{path}"), rope.get(path)))
    norm = adapter.final_norm
    sources.append(TensorSource(f"{_gguf_name(name_map, spec.final_norm)}.weight", f"{spec.final_norm}.weight",
                                "norm", norm.weight.data))
    head = adapter.lm_head
    if not (isinstance(head, nn.Linear) and head.weight is embedding.weight):  # tied: llama.cpp reuses token_embd
        sources.extend(_linear_sources(head, spec.lm_head, _gguf_name(name_map, spec.lm_head), None))
    _check_covered(model, sources, tied=f"{spec.lm_head}.weight")
    return sources


def _linear_sources(module: nn.Module, name: str, gguf_base: str, rope_heads: int | None) -> list[TensorSource]:
    if isinstance(module, QuantizedLinear):
        out = [TensorSource(f"{gguf_base}.weight", name, "weight", quantized=module, rope_heads=rope_heads)]
    elif isinstance(module, nn.Linear):
        weight = module.weight.data
        weight = interleave_rotary_rows(weight, rope_heads) if rope_heads else weight
        out = [TensorSource(f"{gguf_base}.weight", f"{name}.weight", "weight", weight)]
    else:
        raise ConfigError(f"'{name}' is a {type(module).__name__}, not a Linear or quantized Linear; "
                          "it cannot be expressed in GGUF")
    if module.bias is not None:
        bias = module.bias.data
        bias = interleave_rotary_rows(bias, rope_heads) if rope_heads else bias
        out.append(TensorSource(f"{gguf_base}.bias", f"{name}.bias", "bias", bias))
    return out


def _check_covered(model: nn.Module, sources: list[TensorSource], tied: str) -> None:
    covered = set()
    for source in sources:
        if source.quantized is not None:
            covered.update(f"{source.hf_name}.{b}" for b in ("codes", "scales", "zeros", "g_idx"))
        else:
            covered.add(source.hf_name)
    for name in model.state_dict():
        if name not in covered and name != tied:
            raise ConfigError(f"the model's tensor '{name}' has no GGUF counterpart; "
                              "this model cannot be exported to GGUF")
