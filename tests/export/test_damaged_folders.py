"""Corrupt or foreign files in an output folder: a one-line error naming the file, never a
traceback; and folders of the older ``modules`` format still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import netslim
from netslim.api import CompressionResult
from netslim.eval.report import Report
from netslim.cli import app
from netslim.export.load import read_marker
from netslim.export.storage import PACKED_FILE, ArtifactError, read_packed
from storage_helpers import logits, quantize_model, wide_llama


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """A packed (quantized) and a dense (plain) folder, each with a report."""
    root = tmp_path_factory.mktemp("saved")
    side = {"ppl": 1.0, "params": 1, "nonzero_params": 1, "size_bytes": 1}
    report = {
        "model": "tiny", "recipe": [], "baseline": side, "compressed": side, "compress_seconds": 0.0,
        "protocol": {"dataset": "d", "seqlen": 16, "windows": 1, "tokens": 16, "predicted_tokens": 15,
                     "bos_per_window": False, "calibration": None},
        "peak_rss_bytes": 0, "layers": [],
    }
    for fmt, model in (("packed", quantize_model(wide_llama(), 4, 128)), ("dense", wide_llama())):
        result = CompressionResult(model, None, [], [], None, 0.0, 0, report=Report.from_dict(report))
        netslim.save(result, root / fmt, format=fmt)
    return {"packed": root / "packed", "dense": root / "dense"}


def _copy(saved: dict[str, Path], fmt: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(saved[fmt], tmp_path / fmt))


def _truncate(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_marker(folder: Path, edit) -> None:
    marker = json.loads((folder / "netslim.json").read_text())
    edit(marker)
    (folder / "netslim.json").write_text(json.dumps(marker))


def _first_record(marker: dict) -> dict:
    return marker["storage"]["tensors"]["model.layers.0.self_attn.q_proj.scales"]


DAMAGE = {
    # name: (folder format, damaged file, how)
    "marker_garbage": ("packed", "netslim.json", lambda f: (f / "netslim.json").write_bytes(b"\x00\xffnot json{")),
    "marker_truncated": ("dense", "netslim.json", lambda f: _truncate(f / "netslim.json")),
    "marker_not_object": ("packed", "netslim.json", lambda f: (f / "netslim.json").write_text("[1, 2]")),
    "marker_no_format": ("packed", "netslim.json", lambda f: _edit_marker(f, lambda m: m.pop("format"))),
    "marker_recipe_type": ("dense", "netslim.json", lambda f: _edit_marker(f, lambda m: m.update(recipe="x"))),
    "marker_storage_type": ("packed", "netslim.json", lambda f: _edit_marker(f, lambda m: m.update(storage=[]))),
    "marker_tensors_type": ("packed", "netslim.json",
                            lambda f: _edit_marker(f, lambda m: m["storage"].update(tensors=[1]))),
    "marker_modules_type": ("packed", "netslim.json", lambda f: _edit_marker(f, lambda m: m.update(modules=3))),
    "marker_bad_module": ("packed", "netslim.json",
                          lambda f: _edit_marker(f, lambda m: m["modules"]["model.layers.0.mlp.up_proj"].pop("bits"))),
    "packed_missing": ("packed", PACKED_FILE, lambda f: (f / PACKED_FILE).unlink()),
    "packed_truncated": ("packed", PACKED_FILE, lambda f: _truncate(f / PACKED_FILE)),
    "dense_missing": ("dense", "model.safetensors", lambda f: (f / "model.safetensors").unlink()),
    "dense_truncated": ("dense", "model.safetensors", lambda f: _truncate(f / "model.safetensors")),
    "record_dtype": ("packed", PACKED_FILE, lambda f: _edit_marker(f, lambda m: _first_record(m).update(dtype="int99"))),
    "record_codec": ("packed", PACKED_FILE, lambda f: _edit_marker(f, lambda m: _first_record(m).update(codec="zip"))),
    "record_shape": ("packed", PACKED_FILE, lambda f: _edit_marker(f, lambda m: _first_record(m).update(shape=[3, 3]))),
    "record_bits": ("packed", PACKED_FILE, lambda f: _edit_marker(
        f, lambda m: m["storage"]["tensors"]["model.layers.0.self_attn.q_proj.codes"].update(bits=3))),
    "record_not_object": ("packed", PACKED_FILE, lambda f: _edit_marker(
        f, lambda m: m["storage"]["tensors"].update({"model.norm.weight": "dense"}))),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_is_a_one_line_error_naming_it(saved, tmp_path, case):
    fmt, name, damage = DAMAGE[case]
    folder = _copy(saved, fmt, tmp_path)
    damage(folder)
    with pytest.raises(ArtifactError) as error:
        netslim.load(folder)
    message = str(error.value)
    assert str(folder / name) in message and "\n" not in message
    if case.startswith("record"):
        assert "netslim.json" in message  # where the record lives
    if name == "netslim.json" and case != "marker_bad_module":
        with pytest.raises(ArtifactError):
            read_marker(folder)
    if case.startswith(("record", "packed")):
        storage = json.loads((folder / "netslim.json").read_text())["storage"]
        with pytest.raises(ArtifactError, match=str(folder / PACKED_FILE)):
            read_packed(folder, storage["tensors"], storage["aliases"])


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", "{}"])
def test_info_names_a_damaged_report(saved, tmp_path, content):
    folder = _copy(saved, "packed", tmp_path)
    (folder / "report.json").write_text(content)
    result = CliRunner().invoke(app, ["info", str(folder)])
    assert result.exit_code == 2
    assert str(folder / "report.json") in result.output.replace("\n", "")
    assert "Traceback" not in result.output


def test_info_names_a_damaged_marker(saved, tmp_path):
    folder = _copy(saved, "dense", tmp_path)
    _truncate(folder / "netslim.json")
    result = CliRunner().invoke(app, ["info", str(folder)])
    assert result.exit_code == 2
    assert str(folder / "netslim.json") in result.output.replace("\n", "")


def test_older_modules_format_still_loads(tmp_path):
    model = quantize_model(wide_llama(), 4, 128)
    expected = logits(model)
    netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "old", dtype=None)
    # what netslim wrote before the packed file: save_pretrained's model.safetensors and module specs
    model.save_pretrained(tmp_path / "old")
    (tmp_path / "old" / PACKED_FILE).unlink()
    _edit_marker(tmp_path / "old", lambda m: m.update(format="modules", storage={"summary": m["storage"]["summary"]}))
    assert torch.equal(logits(netslim.load(tmp_path / "old").model), expected)
