"""``netslim bench``: the dense model found and timed beside, the figures, the JSON, the errors."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys

import pytest
import torch

import netslim
from netslim.bench import bench, dense_source
from netslim.errors import ConfigError, NetslimError
from netslim.eval import llamacpp
from tiny_models import tiny_llama_with_bpe

needs_llamacpp = pytest.mark.skipif(not llamacpp.available(), reason="llama-cpp-python is not installed "
                                    "(optional extra netslim[llamacpp])")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A dense tiny llama saved as a Hugging Face folder, and its RTN 4-bit netslim folder (Q4_0 grid)."""
    root = tmp_path_factory.mktemp("bench")
    dense = root / "dense"
    model, tokenizer = tiny_llama_with_bpe()
    model.save_pretrained(dense)
    tokenizer.save_pretrained(dense)
    lm = netslim.load_model(str(dense))
    ids = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    from netslim.data.windows import TokenWindows

    result = netslim.compress(lm, {"method": "rtn", "gguf": "q4_0"}, TokenWindows(ids, "random", 32, 0, False),
                              progress=False)
    netslim.save(result, root / "q4")
    return dense, root / "q4"


def test_a_netslim_folder_names_its_dense_model(folders, tmp_path):
    dense, q4 = folders
    assert dense_source(str(q4)) == str(dense)
    assert dense_source(str(dense)) is None  # a plain folder is its own dense model
    netslim.export_gguf(str(q4), tmp_path / "q4.gguf")
    assert dense_source(str(tmp_path / "q4.gguf")) == str(dense)  # through the GGUF's netslim.source


def test_torch_bench_times_the_model_and_its_dense_model_side_by_side(folders):
    dense, q4 = folders
    results = bench(str(q4), threads=1, prompt_tokens=32, new_tokens=4, repeats=2, warmup=0)
    assert results["runtime"] == "torch" and results["threads"] == 1
    assert set(results["models"]) == {"model", "dense"} and results["models"]["dense"]["source"] == str(dense)
    for entry in results["models"].values():
        assert entry["runs"] == 2
        assert entry["prefill_tokens_per_s"] == pytest.approx(32 / entry["prefill_s"])
        assert entry["decode_tokens_per_s"] == pytest.approx(4 / entry["generate_s"])
    model, base = results["models"]["model"], results["models"]["dense"]
    assert results["prefill_speedup"] == pytest.approx(base["prefill_s"] / model["prefill_s"])
    assert results["decode_speedup"] == pytest.approx(base["generate_s"] / model["generate_s"])


def test_a_dense_model_alone_has_no_speedup(folders):
    dense, _ = folders
    results = bench(str(dense), threads=1, prompt_tokens=32, new_tokens=2, repeats=1, warmup=0)
    assert set(results["models"]) == {"model"} and "prefill_speedup" not in results


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"runtime": "onnx"}, "--runtime 'onnx'"),
    ({"threads": 0}, "--threads 0"),
    ({"prompt_tokens": 8}, "--prompt-tokens 8"),
    ({"new_tokens": 0}, "--new-tokens 0"),
])
def test_bad_options_fail_before_anything_loads(kwargs, message, monkeypatch):
    monkeypatch.setattr("netslim.bench.dense_source", lambda model: pytest.fail("loaded something"))
    with pytest.raises(ConfigError, match=message):
        bench("does-not-exist", **kwargs)


def test_llamacpp_runtime_without_llama_cpp_python_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "llama_cpp", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    with pytest.raises(NetslimError, match=r"pip install 'netslim\[llamacpp\]'"):
        bench("does-not-exist", runtime="llama.cpp")


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from netslim.cli import main; main()", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})


def test_cli_writes_the_json_and_keeps_an_existing_file(folders, tmp_path):
    _, q4 = folders
    out = tmp_path / "bench.json"
    args = ("bench", q4, "--threads", "1", "--prompt-tokens", "32", "--new-tokens", "2", "--repeats", "1")
    done = _cli(*args, "--out", out)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.read_text())
    assert set(results["models"]) == {"model", "dense"} and "decode_speedup" in results
    assert "speed-up over dense" in done.stdout
    again = _cli(*args, "--out", out)
    assert again.returncode == 2 and again.stderr.strip().startswith("error:") and "--overwrite" in again.stderr
    other = tmp_path / "notes.json"
    other.write_text('{"mine": 1}')
    refused = _cli(*args, "--out", other, "--overwrite")
    assert refused.returncode == 2 and "not written by netslim" in refused.stderr
    assert json.loads(other.read_text()) == {"mine": 1}


@needs_llamacpp
def test_llamacpp_bench_exports_the_dense_model_in_the_same_type(folders):
    _, q4 = folders
    results = bench(str(q4), runtime="llama.cpp", threads=1, prompt_tokens=32, new_tokens=4, repeats=1, warmup=0)
    model, base = results["models"]["model"], results["models"]["dense"]
    assert model["weight_type"] == base["weight_type"] == "Q4_0"
    assert model["decode_tokens_per_s"] > 0 and results["prefill_speedup"] > 0
