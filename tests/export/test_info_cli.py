"""``netslim info`` shows the storage of a folder; ``compress --format`` is validated."""

from __future__ import annotations

from typer.testing import CliRunner

import netslim
from netslim.api import CompressionResult
from netslim.cli import app
from netslim.eval.size import folder_weight_bytes
from storage_helpers import quantize_model, wide_llama

runner = CliRunner()


def test_info_shows_size_bits_per_weight_and_codecs(tmp_path):
    model = quantize_model(wide_llama(), 4, 128)
    netslim.save(CompressionResult(model, None, [], [], None, 0.0, 0), tmp_path / "q4")
    result = runner.invoke(app, ["info", str(tmp_path / "q4")])
    assert result.exit_code == 0, result.output
    assert "format packed" in result.output
    assert f"weights on disk: {folder_weight_bytes(tmp_path / 'q4') / 1e6:.2f} MB" in result.output
    bits = float(result.output.split(" bits per weight")[0].rsplit(",", 1)[1])
    assert 4.0 < bits < 4.8
    assert "lowbit" in result.output and "dense" in result.output


def test_compress_rejects_unknown_format_before_work(tmp_path):
    result = runner.invoke(app, ["compress", "smollm2-135m", "--method", "magnitude", "--out",
                                 str(tmp_path / "x"), "--format", "zip"])
    assert result.exit_code == 2
    assert "storage format 'zip': use one of auto, dense, packed" in result.output
    assert not (tmp_path / "x").exists()
