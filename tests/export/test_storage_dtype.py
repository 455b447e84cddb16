"""Value dtype of saved artifacts: small by default beside quantized layers, exact on request,
reproduced in memory by ``round_for_storage``; nonsense dtypes are refused."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import netslim
from netslim.api import CompressionResult
from netslim.errors import ConfigError
from netslim.eval.size import folder_weight_bytes, unique_parameters
from netslim.export.save import round_for_storage
from netslim.export.load import read_marker
from netslim.export.storage import value_dtypes
from storage_helpers import logits, quantize_model, wide_llama


def _narrow_llama() -> torch.nn.Module:
    """Hidden 128 and a vocabulary of 256: embeddings and LM head are a fifth of the weights,
    so storing them in float32 beside 4-bit layers costs 0.59x the fp16 bytes, float16 0.40x."""
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
    return T.AutoModelForCausalLM.from_config(config).eval()


def _gptq_g128() -> tuple[torch.nn.Module, CompressionResult, int]:
    model = _narrow_llama()
    fp16_bytes = 2 * sum(p.numel() for p in unique_parameters(model))
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    result = netslim.compress(model, {"method": "gptq", "bits": 4, "group_size": 128}, calib, progress=False)
    return model, result, fp16_bytes


def test_default_gptq_g128_artifact_is_small_and_round_for_storage_reproduces_it(tmp_path):
    model, result, fp16_bytes = _gptq_g128()
    exact = logits(model)
    netslim.save(result, tmp_path / "exact", dtype=None)
    assert torch.equal(logits(netslim.load(tmp_path / "exact").model), exact)  # dtype=None: bit-exact

    netslim.save(result, tmp_path / "default")
    assert folder_weight_bytes(tmp_path / "default") <= 0.45 * fp16_bytes
    assert read_marker(tmp_path / "default")["storage"]["value_dtype"] == "float16"
    tensors = read_marker(tmp_path / "default")["storage"]["tensors"]
    assert tensors["lm_head.weight"]["stored"] == "float16"
    assert tensors["model.layers.0.mlp.up_proj.scales"]["stored"] == "float32"  # quantizer's own: exact
    round_for_storage(model)
    rounded = logits(model)
    assert not torch.equal(rounded, exact)
    assert torch.equal(logits(netslim.load(tmp_path / "default").model), rounded)
    round_for_storage(model)  # idempotent: already representable
    assert torch.equal(logits(model), rounded)


def test_models_without_quantized_layers_stay_exact_by_default(tmp_path):
    model = wide_llama()
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    result = netslim.compress(model, {"method": "svd", "ratio": 0.5}, calib, progress=False)
    before = logits(model)
    round_for_storage(model)
    assert torch.equal(logits(model), before)
    netslim.save(result, tmp_path / "out")
    assert read_marker(tmp_path / "out")["storage"]["value_dtype"] == "own"
    assert torch.equal(logits(netslim.load(tmp_path / "out").model), before)


def test_auto_value_dtype_follows_bfloat16_and_keeps_overflowing_tensors(tmp_path):
    model = quantize_model(wide_llama(), 4, 128)
    model.model.embed_tokens.to(torch.bfloat16)
    dtypes = value_dtypes(model)
    assert dtypes["lm_head.weight"] == torch.bfloat16  # the model has bfloat16 values: no float16
    assert dtypes["model.embed_tokens.weight"] is None  # already 16-bit
    assert dtypes["model.layers.0.self_attn.q_proj.scales"] is None
    model = quantize_model(wide_llama(), 4, 128)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = 1e6  # overflows float16: stays float32, exact
    round_for_storage(model)
    assert model.lm_head.weight[0, 0] == 1e6
    expected = logits(model)
    netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "out")
    assert read_marker(tmp_path / "out")["storage"]["tensors"]["lm_head.weight"]["stored"] == "float32"
    assert torch.equal(logits(netslim.load(tmp_path / "out").model), expected)


def test_explicit_float16_rounds_scales_too_and_round_for_storage_matches(tmp_path):
    model = quantize_model(wide_llama(), 4, 128)
    round_for_storage(model, dtype=torch.float16, format="packed")
    assert model.model.layers[0].mlp.up_proj.scales.dtype == torch.float32
    assert torch.equal(model.model.layers[0].mlp.up_proj.scales.half().float(), model.model.layers[0].mlp.up_proj.scales)
    expected = logits(model)
    netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "out", format="packed",
                 dtype=torch.float16)
    tensors = read_marker(tmp_path / "out")["storage"]["tensors"]
    assert tensors["model.layers.0.mlp.up_proj.scales"]["stored"] == "float16"
    assert torch.equal(logits(netslim.load(tmp_path / "out").model), expected)


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, torch.complex64, "float8", "int8", 16])
def test_non_floating_or_nonsense_dtype_is_refused(tmp_path, dtype):
    model = quantize_model(wide_llama(), 4, 128)
    with pytest.raises(ConfigError, match="storage dtype") as error:
        netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "out", dtype=dtype)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="storage dtype"):
        round_for_storage(model, dtype=dtype)


def test_a_dtype_may_be_named(tmp_path):
    model = quantize_model(wide_llama(), 4, 128)
    netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "out", dtype="float16")
    assert read_marker(tmp_path / "out")["storage"]["value_dtype"] == "float16"
