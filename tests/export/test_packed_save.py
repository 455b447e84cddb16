"""Saving in every storage format and loading back: same logits, smaller files, safe writes."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import load_file, save_file

import netslim
from netslim.api import CompressionResult
from netslim.eval.report import Report
from netslim.errors import ConfigError
from netslim.export.load import read_marker
from netslim.export.storage import PACKED_FILE
from netslim.eval.size import folder_weight_bytes
from storage_helpers import logits, quantize_model, wide_llama


def _result(model: torch.nn.Module, report: Report | None = None) -> CompressionResult:
    return CompressionResult(model, None, [], [], None, 0.0, 0, report=report)


def _prune(model, **cfg):
    method = cfg.pop("method")
    config = netslim.MagnitudeConfig(**cfg) if method == "magnitude" else netslim.WandaConfig(**cfg)
    calib = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    netslim.compress(model, config, calib, progress=False)
    return model


COMPRESSIONS = {
    "none": lambda m: m,
    "wanda50": lambda m: _prune(m, method="wanda", ratio=0.5),
    "magnitude_2of4": lambda m: _prune(m, method="magnitude", pattern="2:4"),
    "rtn4_g128": lambda m: quantize_model(m, 4, 128),
    "rtn3_g64": lambda m: quantize_model(m, 3, 64),
    "rtn8_channel": lambda m: quantize_model(m, 8, -1),
    "wanda50_rtn4": lambda m: quantize_model(_prune(m, method="wanda", ratio=0.5), 4, 128),
}


@pytest.mark.parametrize("compression", sorted(COMPRESSIONS))
@pytest.mark.parametrize(("fmt", "dtype"), [("dense", None), ("auto", None), ("packed", None), ("packed", torch.float16)])
def test_load_save_gives_same_logits(tmp_path, compression, fmt, dtype):
    model = COMPRESSIONS[compression](wide_llama())
    expected = logits(model)
    netslim.save(_result(model), tmp_path / "out", format=fmt, dtype=dtype)
    loaded = netslim.load(tmp_path / "out").model
    got = logits(loaded)
    if dtype is None:
        assert torch.equal(got, expected)  # lossless storage: bit-identical logits
    else:  # float16 values: within half precision of the weights
        assert (got - expected).abs().max() < 2e-2 * expected.abs().max()
        assert not torch.equal(got, expected) or compression == "none"


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt", "qwen2"])
def test_families_round_trip_packed(tmp_path, family):
    from tiny_models import tiny_model

    model = _prune(tiny_model(family), method="magnitude", pattern="2:4")
    expected = logits(model)
    netslim.save(_result(model), tmp_path / "out", format="packed")
    assert read_marker(tmp_path / "out")["format"] == "packed"
    assert torch.equal(logits(netslim.load(tmp_path / "out").model), expected)


def _summary(folder: Path) -> dict:
    return read_marker(folder)["storage"]["summary"]["decoder_linears"]


def test_four_bit_g128_weights_take_under_thirty_percent_of_fp16(tmp_path):
    netslim.save(_result(quantize_model(wide_llama(), 4, 128)), tmp_path / "q4")
    linears = _summary(tmp_path / "q4")
    assert linears["bytes"] <= 0.3 * 2 * linears["weights"]
    assert 4.0 < linears["bits_per_weight"] < 4.8  # codes plus fp16 scales and packed zeros


def test_half_sparse_weights_take_under_sixty_percent_of_fp16(tmp_path):
    netslim.save(_result(_prune(wide_llama(), method="wanda", ratio=0.5)), tmp_path / "w50",
                 format="packed", dtype=torch.float16)
    marker = read_marker(tmp_path / "w50")
    linears = marker["storage"]["summary"]["decoder_linears"]
    assert linears["bytes"] <= 0.6 * 2 * linears["weights"]
    codecs = {r["codec"] for n, r in marker["storage"]["tensors"].items() if "layers" in n and n.endswith("proj.weight")}
    assert codecs == {"bitmask"}


def test_packed_file_is_really_smaller_and_summary_counts_its_bytes(tmp_path):
    model = _prune(wide_llama(), method="magnitude", pattern="2:4")
    result = _result(model)
    netslim.save(result, tmp_path / "dense", format="dense")
    netslim.save(result, tmp_path / "packed", format="packed")
    tensor_bytes = read_marker(tmp_path / "packed")["storage"]["summary"]["tensor_bytes"]
    on_disk = folder_weight_bytes(tmp_path / "packed")
    assert tensor_bytes <= on_disk < tensor_bytes + 64 * 1024  # plus the safetensors header
    linear_share = 4 * _summary(tmp_path / "dense")["weights"]
    assert folder_weight_bytes(tmp_path / "dense") - on_disk > 0.4 * linear_share


def test_format_is_honest_about_plain_transformers(tmp_path):
    pruned = _prune(wide_llama(), method="wanda", ratio=0.5)
    netslim.save(_result(pruned), tmp_path / "dense", format="dense")
    assert read_marker(tmp_path / "dense")["format"] == "dense"
    plain = T.AutoModelForCausalLM.from_pretrained(tmp_path / "dense")
    assert torch.equal(logits(plain), logits(pruned))
    netslim.save(_result(pruned), tmp_path / "auto")
    assert read_marker(tmp_path / "auto")["format"] == "dense"  # pruning alone stays plain by default
    netslim.save(_result(pruned), tmp_path / "packed", format="packed")
    assert read_marker(tmp_path / "packed")["format"] == "packed"
    assert not (tmp_path / "packed" / "model.safetensors").exists()
    with pytest.raises(OSError):  # refuses, rather than loading random weights
        T.AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    quantized = quantize_model(wide_llama(), 4, 128)
    netslim.save(_result(quantized), tmp_path / "qdense", format="dense")  # as dequantized Linear weights
    assert read_marker(tmp_path / "qdense")["format"] == "dense"
    assert torch.equal(logits(T.AutoModelForCausalLM.from_pretrained(tmp_path / "qdense")), logits(quantized))


def test_dense_model_in_auto_format_stays_plain_transformers(tmp_path):
    netslim.save(_result(wide_llama()), tmp_path / "out")
    assert read_marker(tmp_path / "out")["format"] == "dense"


def test_codec_overrides_and_bad_format(tmp_path):
    model = _prune(wide_llama(), method="magnitude", pattern="2:4")
    expected = logits(model)
    netslim.save(_result(model), tmp_path / "out", format="packed", codecs={"*.mlp.*": "bitmask"})
    tensors = read_marker(tmp_path / "out")["storage"]["tensors"]
    assert tensors["model.layers.0.mlp.up_proj.weight"]["codec"] == "bitmask"
    assert tensors["model.layers.0.self_attn.q_proj.weight"]["codec"] == "nm"
    assert torch.equal(logits(netslim.load(tmp_path / "out").model), expected)
    with pytest.raises(ConfigError, match="storage format"):
        netslim.save(_result(model), tmp_path / "bad", format="zip")
    with pytest.raises(ConfigError, match="codec"):
        netslim.save(_result(model), tmp_path / "bad", codecs={"*": "zip"})
    assert not (tmp_path / "bad").exists()


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_input_folder_is_never_modified(tmp_path):
    source = tmp_path / "source"
    wide_llama().save_pretrained(source)
    before = _hashes(source)
    lm = netslim.load_model(str(source))
    _prune(lm.model, method="magnitude", ratio=0.5)
    netslim.save(_result(lm.model), tmp_path / "out")
    assert _hashes(source) == before


def test_failure_mid_save_leaves_no_partial_output(tmp_path, monkeypatch):
    model = _prune(wide_llama(), method="magnitude", ratio=0.5)
    netslim.save(_result(model), tmp_path / "kept", format="packed")
    kept = _hashes(tmp_path / "kept")

    def broken(state, plan, dtype, folder, widths=None):
        (folder / PACKED_FILE).write_bytes(b"half written")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sys.modules["netslim.export.save"], "write_packed", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        netslim.save(_result(model), tmp_path / "new", format="packed")
    with pytest.raises(RuntimeError, match="disk full"):
        netslim.save(_result(model), tmp_path / "kept", overwrite=True, format="packed")
    assert not (tmp_path / "new").exists()
    assert _hashes(tmp_path / "kept") == kept  # the old folder survives a failed overwrite
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]  # no temporary leftovers


def test_report_size_is_the_real_on_disk_size(tmp_path):
    model = _prune(wide_llama(), method="wanda", ratio=0.5)
    side = {"ppl": 1.0, "params": 1, "nonzero_params": 1, "size_bytes": 10**9}
    report = {
        "model": "tiny", "recipe": [], "baseline": dict(side), "compressed": dict(side),
        "protocol": {"dataset": "d", "seqlen": 16, "windows": 1, "tokens": 16, "predicted_tokens": 15,
                     "bos_per_window": False, "calibration": None},
        "compress_seconds": 0.0, "peak_rss_bytes": 0, "layers": [],
    }
    netslim.save(_result(model, Report.from_dict(report)), tmp_path / "out", format="packed")
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["compressed"]["size_bytes"] == folder_weight_bytes(tmp_path / "out")
    assert written["storage"]["by_codec"]["bitmask"]["tensors"] == 14


def test_damaged_packed_folder_is_a_clear_error(tmp_path):
    model = _prune(wide_llama(), method="magnitude", ratio=0.5)
    netslim.save(_result(model), tmp_path / "out", format="packed")
    parts = load_file(tmp_path / "out" / PACKED_FILE)
    save_file({k: v for k, v in parts.items() if not k.startswith("model.layers.0.mlp.up_proj.weight.")},
              tmp_path / "out" / PACKED_FILE)
    with pytest.raises(netslim.NetslimError, match="damaged"):
        netslim.load(tmp_path / "out")
