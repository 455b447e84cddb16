"""The architecture and hyperparameters of a GGUF file, read from the model itself.

Families and architectures:

- ``llama`` (SmolLM2 is llama) and ``mistral`` -> GGUF ``llama`` (llama.cpp writes Mistral as
  llama too; its q/k rows are interleaved, see :mod:`netslim.export.gguf.tensors`);
- ``qwen2`` -> GGUF ``qwen2`` (q/k/v biases, rotate-half rope: rows unpermuted).

Sizes are read from the weights, not the config, so pruned models are described as they are:
``block_count`` is the number of blocks left (depth pruning), and per block the query heads,
key-value heads and MLP width (width pruning). When every block has the same sizes they are
written as scalars. When they differ they are written as per-layer arrays
(``{arch}.attention.head_count``, ``{arch}.attention.head_count_kv``,
``{arch}.feed_forward_length``), and the architecture is ``deci``: llama.cpp reads per-layer
arrays for every architecture, but only ``deci`` (Llama-Nemotron's, a llama block with
optional biases) builds each block with its own sizes; ``llama`` and ``qwen2`` build every
block with block 0's sizes. The head width is then stated by ``attention.key_length`` /
``value_length``, since it no longer follows from ``embedding_length / head_count``.
transformers' GGUF loader knows no ``deci`` (and maps arrays to lists its configs reject),
so such files are for llama.cpp only.
"""

from __future__ import annotations

from netslim.errors import ConfigError, UnsupportedModelError
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter

# Hugging Face model_type -> GGUF architecture (when every block has the same sizes).
FAMILY_ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}
PER_LAYER_ARCH = "deci"


def check_family(model) -> ModelAdapter:
    """The adapter of a model GGUF export supports.

    Raises:
        UnsupportedModelError: naming the supported families.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILY_ARCHS:
        raise UnsupportedModelError(f"GGUF export supports {', '.join(FAMILY_ARCHS)} models (SmolLM2 is llama); "
                                    f"'{model_type}' is not supported")
    return ModelAdapter.from_model(model)


def block_sizes(adapter: ModelAdapter) -> list[tuple[int, int, int]]:
    """(query heads, key-value heads, MLP width) of every block, read from its weights."""
    return [(*surgery.head_counts(adapter, i), surgery.intermediate_size(adapter, i)) for i in range(adapter.num_blocks)]


def architecture(adapter: ModelAdapter, sizes: list[tuple[int, int, int]]) -> str:
    """The GGUF architecture: the family's, or ``deci`` when blocks differ in size."""
    return FAMILY_ARCHS[adapter.config.model_type] if len(set(sizes)) == 1 else PER_LAYER_ARCH


def _rope(config) -> tuple[float, str, dict]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0), params.get("rope_type", params.get("type", "default")), params


def add_hparams(writer, adapter: ModelAdapter, arch: str, sizes: list[tuple[int, int, int]]) -> list[str]:
    """Write the hyperparameter keys; return notes on what GGUF does not express.

    Raises:
        ConfigError: for a rope scaling GGUF export does not write (only default and linear).
    """
    import gguf  # noqa: PLC0415

    config, notes = adapter.config, []
    uint32, float32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    theta, rope_type, params = _rope(config)
    if rope_type not in ("default", "linear"):
        raise ConfigError(f"rope scaling '{rope_type}' cannot be exported to GGUF yet; supported: default, linear")
    head_dim = adapter.head_dim
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(adapter.hidden_size)
    writer.add_block_count(adapter.num_blocks)
    for key, column in ((gguf.Keys.LLM.FEED_FORWARD_LENGTH, 2), (gguf.Keys.Attention.HEAD_COUNT, 0),
                        (gguf.Keys.Attention.HEAD_COUNT_KV, 1)):
        values = [s[column] for s in sizes]
        if len(set(values)) == 1:
            writer.add_key_value(key.format(arch=arch), values[0], uint32)
        else:
            writer.add_key_value(key.format(arch=arch), values, gguf.GGUFValueType.ARRAY, sub_type=uint32)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    writer.add_key_value(gguf.Keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch), float(config.rms_norm_eps), float32)
    if arch == PER_LAYER_ARCH or head_dim * sizes[0][0] != adapter.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(adapter.embeddings[0].num_embeddings)
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", True)
    if window and uses_window and window < config.max_position_embeddings:
        notes.append(f"sliding window of {window} tokens not written: GGUF '{arch}' attends to the whole context "
                     f"(the same results for sequences of up to {window} tokens)")
    return notes
