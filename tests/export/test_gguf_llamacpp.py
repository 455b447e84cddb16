"""GGUF exports run in llama.cpp itself: its perplexity equals netslim's on the same token ids.

These tests need llama-cpp-python (the optional extra netslim[llamacpp], which compiles
llama.cpp); they are skipped where it is not installed, as in CI, whose GGUF checks use the
gguf reader and transformers' GGUF loader instead (test_gguf_export.py).
"""

from __future__ import annotations

import pytest
import torch

import netslim
from netslim.data.windows import TokenWindows
from netslim.eval import llamacpp
from netslim.eval.perplexity import perplexity
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter
from tiny_models import tiny_llama_with_bpe

pytestmark = pytest.mark.skipif(not llamacpp.available(),
                                reason="llama-cpp-python is not installed (optional extra netslim[llamacpp])")

VOCAB = 300  # tiny_llama_with_bpe's


@pytest.fixture(scope="module")
def windows():
    ids = torch.randint(3, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    return TokenWindows(ids, "random tokens", 32, None, False)


def _ppl_pair(model, tokenizer, path, windows, **export) -> tuple[float, float, dict]:
    summary = netslim.export_gguf(netslim.LoadedModel(model, tokenizer, "tiny"), path, **export)
    ours = perplexity(model, windows, progress=False).ppl
    theirs = llamacpp.perplexity(path, windows, threads=1, progress=False).ppl
    return ours, theirs, summary


def test_dense_f32_export_has_netslims_perplexity(tmp_path, windows):
    model, tokenizer = tiny_llama_with_bpe()
    ours, theirs, _ = _ppl_pair(model, tokenizer, tmp_path / "f32.gguf", windows, type="f32")
    assert theirs == pytest.approx(ours, rel=1e-4)


@pytest.mark.parametrize("grid", ["q4_0", "q4_1", "q5_0", "q8_0"])
def test_gptq_on_a_gguf_grid_has_netslims_perplexity_in_llamacpp(tmp_path, windows, grid):
    model, tokenizer = tiny_llama_with_bpe()
    netslim.compress(model, {"method": "gptq", "gguf": grid}, calibration=windows, progress=False)
    ours, theirs, summary = _ppl_pair(model, tokenizer, tmp_path / "q.gguf", windows, type="f32")
    assert all(t["exact"] for t in summary["tensors"] if "bits" in t)
    # llama.cpp multiplies these blocks with activations rounded to 8 bits (its Q8 dot products)
    assert theirs == pytest.approx(ours, rel=1e-2)


def test_uneven_widths_run_in_llamacpp_as_deci(tmp_path, windows):
    model, tokenizer = tiny_llama_with_bpe()
    netslim.compress(model, netslim.WidthConfig(ratio=0.5, score="flap", allocation="global", gqa="query"),
                     calibration=windows, progress=False)
    adapter = ModelAdapter.from_model(model)
    surgery.prune_heads(adapter, 1, keep_q=torch.tensor([1]), keep_kv=torch.tensor([1]))
    ours, theirs, summary = _ppl_pair(model, tokenizer, tmp_path / "w.gguf", windows, type="f32")
    assert summary["architecture"] == "deci"
    assert theirs == pytest.approx(ours, rel=1e-4)


def test_depth_pruned_export_runs_in_llamacpp(tmp_path, windows):
    model, tokenizer = tiny_llama_with_bpe()
    netslim.compress(model, netslim.DepthConfig(ratio=0.5), calibration=windows, progress=False)
    ours, theirs, summary = _ppl_pair(model, tokenizer, tmp_path / "d.gguf", windows, type="f32")
    assert summary["block_count"] == 1
    assert theirs == pytest.approx(ours, rel=1e-4)


def test_llamacpp_quantizer_presets_write_loadable_files(tmp_path, windows):
    model, tokenizer = tiny_llama_with_bpe()
    netslim.export_gguf(netslim.LoadedModel(model, tokenizer, "tiny"), tmp_path / "f32.gguf", type="f32")
    out = llamacpp.quantize(tmp_path / "f32.gguf", tmp_path / "q8.gguf", "Q8_0", threads=1)
    ppl = llamacpp.perplexity(out, windows, threads=1, progress=False).ppl
    assert ppl == pytest.approx(perplexity(model, windows, progress=False).ppl, rel=2e-2)
    with pytest.raises(netslim.NetslimError, match="preset 'Q2_X'"):
        llamacpp.quantize(tmp_path / "f32.gguf", tmp_path / "x.gguf", "Q2_X", threads=1)
