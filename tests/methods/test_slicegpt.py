"""SliceGPT on tiny models: exact equivalence without deletion, export, generation, sizes."""

import pytest
import torch
import transformers as T

import netslim
from netslim.errors import ConfigError, UnsupportedModelError
from netslim.methods import SliceGPTConfig, build_config
from netslim.models import rotate
from netslim.models.adapter import ModelAdapter
from netslim.models.sliced import SlicedDecoderLayer, UnscaledRMSNorm

from tiny_models import tiny_model

PROMPT = torch.randint(3, 128, (2, 20), generator=torch.Generator().manual_seed(5))


def _logits(model, ids=PROMPT):
    with torch.no_grad():
        return model(ids).logits


def _tiny_gemma():
    config = T.GemmaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def _tied_llama():
    model = tiny_model("llama")
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model


BUILDERS = {
    "llama": lambda: tiny_model("llama"),
    "qwen2": lambda: tiny_model("qwen2"),
    "mistral": lambda: tiny_model("mistral"),
    "gemma": _tiny_gemma,
    "tied-llama": _tied_llama,
}


@pytest.mark.parametrize("build", list(BUILDERS.values()), ids=list(BUILDERS))
def test_rotation_without_deletion_leaves_logits_unchanged(build, token_windows):
    model = build()
    before = _logits(model)
    netslim.compress(model, SliceGPTConfig(ratio=0.0), token_windows, progress=False)
    assert all(isinstance(b, SlicedDecoderLayer) for b in ModelAdapter.from_model(model).blocks)
    assert torch.allclose(_logits(model), before, atol=1e-4)


def test_norm_fusion_alone_is_exact_and_unties_the_head():
    model = _tied_llama()
    before = _logits(model)
    rotate.fuse_norms(ModelAdapter.from_model(model))
    assert isinstance(model.model.norm, UnscaledRMSNorm)
    assert isinstance(model.model.layers[0].input_layernorm, UnscaledRMSNorm)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    assert torch.allclose(_logits(model), before, atol=1e-5)


def test_slicing_shrinks_every_signal_and_more_slicing_drifts_further(token_windows):
    dense = _logits(tiny_model("llama"))
    errors = []
    for slicing in (0.25, 0.5):
        model = tiny_model("llama")
        result = netslim.compress(model, SliceGPTConfig(ratio=slicing), token_windows, progress=False)
        width = 64 - int(64 * slicing)
        assert model.model.embed_tokens.weight.shape == (128, width)
        assert model.lm_head.weight.shape == (128, width)
        assert [(r["d_in"], r["d_mid"], r["d_out"]) for r in result.layers] == [(width, width, width)] * 2
        errors.append(float((_logits(model) - dense).square().mean()))
    assert 0 < errors[0] < errors[1]


def test_parameter_count_matches_the_prediction(token_windows):
    model = tiny_model("qwen2")  # biases on q/k/v
    adapter = ModelAdapter.from_model(model)
    predicted = [rotate.sliced_block_params(adapter, i, 48, 48, 48) for i in range(adapter.num_blocks)]
    result = netslim.compress(model, SliceGPTConfig(ratio=0.25), token_windows, progress=False)
    actual = [sum(p.numel() for p in block.parameters()) for block in adapter.blocks]
    assert actual == predicted == [r["params"] for r in result.layers]
    dense_block = sum(p.numel() for p in tiny_model("qwen2").model.layers[0].parameters())
    assert predicted[0] < dense_block


def test_sliced_model_generates(token_windows):
    model = tiny_model("llama")
    netslim.compress(model, SliceGPTConfig(ratio=0.25), token_windows, progress=False)
    out = model.generate(PROMPT[:1, :5], max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 13)
    assert torch.equal(out[:, :5], PROMPT[:1, :5])
    # the cached generation agrees with a full forward pass over the generated text
    assert int(_logits(model, out[:, :-1])[0, -1].argmax()) == int(out[0, -1])


def test_save_and_load_give_identical_logits(tmp_path, token_windows):
    model = _tied_llama()
    result = netslim.compress(model, SliceGPTConfig(ratio=0.25), token_windows, progress=False)
    netslim.save(result, tmp_path / "sliced")
    loaded = netslim.load(tmp_path / "sliced").model
    assert isinstance(loaded.model.layers[1], SlicedDecoderLayer)
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(_logits(loaded), _logits(model))


def test_config_round_trip_and_errors():
    cfg = build_config({"method": "slicegpt", "ratio": 0.3, "round_to": 16})
    assert cfg == SliceGPTConfig(ratio=0.3, round_to=16)
    assert build_config(cfg.model_dump()) == cfg
    assert cfg.width(576) == 400
    with pytest.raises(ConfigError, match="ratio"):
        build_config({"method": "slicegpt", "ratio": 1.0})
    with pytest.raises(ConfigError, match="unknown setting 'slice'"):
        build_config({"method": "slicegpt", "slice": 0.3})
    with pytest.raises(ConfigError, match="ignore"):
        build_config({"method": "slicegpt", "ignore": ["*.q_proj"]})


@pytest.mark.parametrize("family", ["gemma3_text", "gpt2", "opt"])
def test_families_that_cannot_be_rotated_exactly_are_refused(family, token_windows):
    model = tiny_model(family)
    with pytest.raises(UnsupportedModelError, match="slicegpt cannot slice"):
        netslim.compress(model, SliceGPTConfig(ratio=0.25), token_windows, progress=False)
