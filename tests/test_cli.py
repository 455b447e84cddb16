"""The CLI: every user mistake is one line on stderr and exit status 2."""

import json

import pytest
from typer.testing import CliRunner

from netslim.cli import app
from tiny_models import eval_text_beside

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "wandaa"], "unknown method 'wandaa'; did you mean 'wanda'?"),
        (["--method", "wanda", "--ratio", "1.5"], "ratio=1.5"),
        (["--method", "wanda", "--sparsity", "0.5"], "--sparsity is now spelled --ratio"),
        (["--method", "wanda", "--pattern", "3:2"], "pattern '3:2'"),
        ([], "give --method"),
        (["--method", "wanda", "--recipe", "r.yaml"], "either --recipe or --method"),
        (["--recipe", "missing.yaml"], "recipe file 'missing.yaml' not found"),
        (["--method", "wanda", "--calib", "missing.txt"], "text file 'missing.txt' not found"),
        (["--method", "wanda", "--calib-select", "dsir"], "give it (--calib-target FILE"),
        (["--method", "wanda", "--calib-select", "paser", "--calib-target", "t.txt"], "drop it"),
    ],
)
def test_compress_errors(tiny_folder, tmp_path, args, message):
    folder, _ = tiny_folder
    result = _run("compress", folder, "--out", tmp_path / "o", *args)
    assert result.exit_code == 2, result.output
    # The last line of stderr (progress bars of loading come before it) is the one error line.
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in result.output


def test_paser_calibration_from_the_command_line(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "o"
    result = _run("compress", folder, "--out", out, "--method", "wanda", "--calib", text, "--calib-windows", 4,
                  "--calib-select", "paser", "--seqlen", 32, "--eval", eval_text_beside(text), "--eval-windows", 3)
    assert result.exit_code == 0, result.output
    calibration = json.loads((out / "report.json").read_text())["protocol"]["calibration"]
    assert "PASER after a wanda draft" in calibration["source"] and calibration["windows"] == 4


def test_missing_model_and_existing_output(tiny_folder, tmp_path):
    result = _run("compress", tmp_path / "nothing", "--out", tmp_path / "o", "--method", "wanda")
    assert result.exit_code == 2 and "not found" in result.output
    folder, _ = tiny_folder
    (tmp_path / "o").mkdir()
    result = _run("compress", folder, "--out", tmp_path / "o", "--method", "magnitude")
    assert result.exit_code == 2 and "already exists" in result.output


def test_compress_eval_info_end_to_end(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "o"
    common = ["--seqlen", 32, "--eval", eval_text_beside(text), "--eval-windows", 3]
    result = _run("compress", folder, "--out", out, "--method", "wanda", "--pattern", "2:4",
                  "--calib", text, "--calib-windows", 4, *common)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"][0]["pattern"] == "2:4"
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the per-layer figure beside it
    result = _run("eval", out, *common)
    assert result.exit_code == 0 and f"{report['compressed']['ppl']:.3f}" in result.output
    result = _run("info", out)
    assert result.exit_code == 0 and "wanda" in result.output
    assert _run("info", tmp_path).exit_code == 2


def test_every_command_has_help_with_examples():
    for command in ("compress", "eval", "info", "demo"):
        result = _run(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output
