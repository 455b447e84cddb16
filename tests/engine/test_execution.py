"""Devices, dtypes and batches: batched forwards give the statistics of one window at a time,
bf16 and fp16 models are calibrated with float32 statistics, and a job runs in the dtype asked
for and says so in its report; mistakes are one line before any work."""

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import netslim
from netslim.cli import app
from netslim.engine.execution import Execution
from netslim.engine.stats import Stat
from netslim.engine.sweep import iter_block_stats
from netslim.errors import ConfigError
from netslim.eval.perplexity import perplexity
from netslim.job import Protocol, compress_job
from netslim.models.adapter import ModelAdapter
from tiny_models import eval_text_beside, tiny_model

NEEDS = frozenset({Stat.HESSIAN, Stat.ACT_NORM})


def _hessians(model, windows, batch_size):
    adapter = ModelAdapter.from_model(model)
    return {name: stats.hessian for _, block in iter_block_stats(adapter, windows, NEEDS, batch_size=batch_size)
            for name, stats in block.layers.items()}


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "opt"])
def test_batched_forwards_give_the_statistics_of_single_windows(family, token_windows):
    model = tiny_model(family)
    single, batched = _hessians(model, token_windows, 1), _hessians(model, token_windows, 3)  # batches 1, 3, 3, 1
    assert single.keys() == batched.keys() and len(single) > 0
    for name in single:
        torch.testing.assert_close(batched[name], single[name], rtol=1e-4, atol=1e-5)


def test_batched_compression_and_perplexity_match(token_windows):
    results = {}
    for batch in (1, 4):
        model = tiny_model("llama")
        netslim.compress(model, {"method": "gptq", "bits": 4, "group_size": 32}, token_windows, progress=False,
                         batch_size=batch)
        results[batch] = (model.model.layers[1].mlp.down_proj.dequantize(),
                          perplexity(model, token_windows, progress=False, batch_size=batch).ppl)
    differing = (results[4][0] - results[1][0]).abs().gt(1e-4).float().mean()
    assert differing < 0.01  # a code may flip where rounding breaks a near tie, no more
    assert results[4][1] == pytest.approx(results[1][1], rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_get_float32_statistics(dtype, token_windows):
    reference = _hessians(tiny_model("llama"), token_windows, 2)
    half = _hessians(tiny_model("llama").to(dtype), token_windows, 2)
    for name, hessian in half.items():
        assert hessian.dtype == torch.float32
        relative = (hessian - reference[name]).norm() / reference[name].norm()
        assert relative < 0.02, name  # only the forwards' rounding differs


@pytest.mark.parametrize("method", [{"method": "gptq", "bits": 4, "group_size": 32},
                                    {"method": "sparsegpt", "ratio": 0.5}, {"method": "svd_llm", "ratio": 0.3}])
def test_a_bf16_model_compresses_like_a_float32_one(method, token_windows):
    dense = tiny_model("llama")
    reference, half = tiny_model("llama"), tiny_model("llama").to(torch.bfloat16)
    for model in (reference, half):
        netslim.compress(model, method, token_windows, progress=False)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    ids = token_windows.ids[:2]
    with torch.no_grad():
        target = dense(ids).logits
        error = {name: (m(ids).logits.float() - target).norm() / target.norm()
                 for name, m in (("float32", reference), ("bfloat16", half))}
    assert error["bfloat16"] < 1.5 * error["float32"] + 0.02, error


def test_execution_settings_are_checked():
    with pytest.raises(ConfigError, match="device 'gpu'"):
        Execution(device="gpu")
    with pytest.raises(ConfigError, match="dtype 'float8'"):
        Execution(dtype="float8")
    with pytest.raises(ConfigError, match="batch size 0"):
        Execution(batch_size=0)
    with pytest.raises(ConfigError, match="batch size 0"):
        netslim.evaluate(tiny_model("llama"), data=None, batch_size=0)
    assert Execution(device="auto").torch_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_a_missing_cuda_device_fails_in_one_line_before_loading(tiny_folder, tmp_path):
    folder, text = tiny_folder
    result = CliRunner().invoke(app, ["compress", str(folder), "--out", str(tmp_path / "o"), "--method", "wanda",
                                      "--calib", str(text), "--device", "cuda:1"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: --device cuda:1: this machine has no CUDA device")
    assert not (tmp_path / "o").exists()


def test_a_bf16_job_reports_its_execution_and_reloads_in_bf16(tiny_folder, tmp_path):
    folder, text = tiny_folder
    protocol = Protocol(seqlen=32, calib=str(text), calib_windows=4, eval=str(eval_text_beside(text)),
                        eval_windows=3)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        compress_job(str(folder), {"method": "wanda", "ratio": 0.5}, out, protocol, progress=False,
                     execution=Execution(dtype=dtype, batch_size=2))
        runs[dtype] = json.loads((out / "report.json").read_text())
    execution = runs["bfloat16"]["protocol"]["execution"]
    assert execution["dtype"] == "bfloat16" and execution["batch_size"] == 2 and execution["device"] == "cpu"
    assert "bfloat16, batch 2 windows per forward" in (tmp_path / "bfloat16" / "report.md").read_text()
    for side in ("baseline", "compressed"):  # bf16 forwards change perplexity by rounding only
        assert runs["bfloat16"][side]["ppl"] == pytest.approx(runs["float32"][side]["ppl"], rel=0.03)
    check = ("import glob, netslim, torch; from safetensors import safe_open; folder = r'{}'; "
             "files = [safe_open(f, 'pt') for f in glob.glob(folder + '/*.safetensors')]; "
             "print(sorted({{str(f.get_slice(k).get_dtype()) for f in files for k in f.keys()}})); "
             "m = netslim.load(folder, dtype=torch.bfloat16).model; "
             "print(sorted({{str(p.dtype) for p in m.parameters()}}))")
    loaded = subprocess.run([sys.executable, "-c", check.format(tmp_path / "bfloat16")], capture_output=True,
                            text=True, check=True)
    assert loaded.stdout.split() == ["['BF16']", "['torch.bfloat16']"]  # written and reloaded in bf16
