"""Depth pruning: the redundant block goes, the result reloads with plain transformers."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import netslim
from tiny_models import tiny_model
from netslim.errors import ConfigError
from netslim.engine.stats import Stat
from netslim.engine.sweep import iter_block_stats
from netslim.export.load import read_marker
from netslim.models.adapter import ModelAdapter

IDS = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(3))


def _three_blocks_with_identity(family: str, identity: int):
    model = tiny_model(family)
    adapter = ModelAdapter.from_model(model)
    adapter.blocks.append(copy.deepcopy(adapter.blocks[1]))
    adapter.block_part(2, "self_attn").layer_idx = 2
    model.config.num_hidden_layers = 3
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = list(model.config.layer_types) + [model.config.layer_types[-1]]
    with torch.no_grad():  # zero outputs of attention and MLP: the block passes its input on
        adapter.block_part(identity, adapter.spec.attn_out).weight.zero_()
        adapter.block_part(identity, adapter.spec.mlp_out).weight.zero_()
    return model


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_identity_block_is_removed_and_logits_unchanged(family, token_windows):
    model = _three_blocks_with_identity(family, identity=1)
    before = model(IDS).logits
    result = netslim.compress(model, netslim.DepthConfig(ratio=1 / 3), calibration=token_windows, progress=False)
    assert [r["name"] for r in result.layers] == [f"{ModelAdapter.from_model(model).spec.layers}.1"]
    assert model.config.num_hidden_layers == 2
    torch.testing.assert_close(model(IDS).logits, before, atol=1e-5, rtol=1e-5)
    assert model.generate(IDS, max_new_tokens=4, do_sample=False).shape == (1, 20)


def test_skip_perplexity_of_an_identity_block_is_the_dense_perplexity(token_windows):
    model = _three_blocks_with_identity("llama", identity=1)
    adapter = ModelAdapter.from_model(model)
    ids = token_windows.ids[:4]
    swept = iter_block_stats(adapter, token_windows, frozenset({Stat.SKIP_LOSS}), windows=4)
    scores = torch.tensor([math.exp(block.skip_loss) for _, block in swept])
    with torch.no_grad():
        dense = math.exp(float(model(ids, labels=ids).loss))
    assert abs(float(scores[1]) - dense) < 1e-3 * dense
    assert len({round(float(s), 3) for s in scores}) == 3
    result = netslim.compress(model, {"method": "depth", "ratio": 0.5, "score": "perplexity", "score_windows": 4},
                              calibration=token_windows, progress=False)
    assert result.layers[0]["perplexity"] == pytest.approx(float(scores.min()))


def test_depth_result_loads_with_plain_transformers(tmp_path, token_windows):
    model = _three_blocks_with_identity("llama", identity=2)
    result = netslim.compress(model, {"method": "depth", "ratio": 0.34}, calibration=token_windows, progress=False)
    netslim.save(result, tmp_path / "out")
    assert read_marker(tmp_path / "out")["format"] == "dense"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert plain.config.num_hidden_layers == 2
    torch.testing.assert_close(plain(IDS).logits, model(IDS).logits)


def test_depth_settings_are_validated(token_windows):
    with pytest.raises(ConfigError):
        netslim.compress(tiny_model("llama"), {"method": "depth", "ratio": 0.5, "remove": [1, 1]}, calibration=token_windows)
    with pytest.raises(ConfigError, match="'blocks' is now spelled ratio"):
        netslim.compress(tiny_model("llama"), {"method": "depth", "blocks": 1}, calibration=token_windows)
    with pytest.raises(ConfigError):
        netslim.compress(tiny_model("llama"), {"method": "depth", "ratio": 0.9}, calibration=token_windows, progress=False)
    with pytest.raises(ConfigError, match="rounds to 0 blocks"):
        netslim.compress(tiny_model("llama"), {"method": "depth", "ratio": 0.2}, calibration=token_windows, progress=False)
    with pytest.raises(ConfigError, match="ignore"):
        netslim.compress(tiny_model("llama"), {"method": "depth", "ratio": 0.5, "ignore": ["model.layers.0.*"]},
                         calibration=token_windows, progress=False)
