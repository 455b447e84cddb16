"""The Python API and the end-to-end job: report contents, save/load, atomic outputs."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import netslim
from netslim.errors import ConfigError, ModelNotFoundError, OutputExistsError
from netslim.job import Protocol, compress_job
from tiny_models import eval_text_beside

PROTO = dict(seqlen=32, calib_windows=4, eval_windows=3, seed=0)


def _protocol(text):
    return Protocol(calib=str(text), eval=str(eval_text_beside(text)), **PROTO)


def test_job_writes_a_complete_report(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "out"
    result = compress_job(str(folder), [{"method": "wanda", "ratio": 0.5}], out, _protocol(text), progress=False)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report.as_dict()))
    assert set(report) >= {"model", "recipe", "protocol", "baseline", "compressed", "compress_seconds", "peak_rss_bytes", "layers"}
    proto = report["protocol"]
    assert (proto["seqlen"], proto["windows"], proto["tokens"]) == (32, 3, 96)
    assert proto["calibration"] == {"source": str(text), "windows": 4, "seqlen": 32, "seed": 0, "bos": False}
    for side in ("baseline", "compressed"):
        assert set(report[side]) == {"ppl", "params", "nonzero_params", "size_bytes"}
    assert report["compressed"]["params"] == report["baseline"]["params"]
    pruned = sum(r["shape"][0] * r["shape"][1] // 2 for r in report["layers"])
    assert report["baseline"]["nonzero_params"] - report["compressed"]["nonzero_params"] == pruned
    assert all({"name", "shape", "sparsity"} <= set(r) for r in report["layers"])
    assert (out / "report.md").read_text().startswith("# netslim report")
    assert netslim.load_recipe(out / "recipe.yaml") == result.recipe


def test_saved_model_reloads_with_identical_logits(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "out"
    result = compress_job(str(folder), [{"method": "magnitude", "pattern": "2:4"}], out, _protocol(text), progress=False)
    ids = torch.randint(3, 120, (2, 16))
    expected = result.model(ids).logits
    torch.testing.assert_close(netslim.load(out).model(ids).logits, expected, rtol=0, atol=0)
    plain = AutoModelForCausalLM.from_pretrained(out)  # dense format: plain transformers loads it
    torch.testing.assert_close(plain(ids).logits, expected, rtol=0, atol=0)
    assert netslim.load_model(str(out)).tokenizer is not None  # a netslim folder is a MODEL too


def test_input_folder_is_never_modified(tiny_folder, tmp_path):
    folder, text = tiny_folder
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    compress_job(str(folder), [{"method": "wanda"}], tmp_path / "o", _protocol(text), progress=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    with pytest.raises(ConfigError, match="is the input"):
        compress_job(str(folder), [{"method": "wanda"}], folder, _protocol(text), overwrite=True, progress=False)


def test_existing_output_is_not_overwritten_unless_asked(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        compress_job(str(folder), [{"method": "magnitude"}], out, _protocol(text), progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError, match="not written by netslim"):  # --overwrite replaces only netslim's own
        compress_job(str(folder), [{"method": "magnitude"}], out, _protocol(text), overwrite=True, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    compress_job(str(folder), [{"method": "magnitude"}], out, _protocol(text), progress=False, overwrite=True)
    compress_job(str(folder), [{"method": "wanda"}], out, _protocol(text), overwrite=True, progress=False)
    assert "wanda" in (out / "recipe.yaml").read_text()


def test_failed_save_leaves_no_partial_output(llama_model, tmp_path, monkeypatch):
    result = netslim.compress(llama_model, {"method": "magnitude"}, progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(llama_model), "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        netslim.save(result, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_calibration_as_id_tensor_and_errors(llama_model):
    ids = torch.randint(3, 120, (4, 16))
    result = netslim.compress(llama_model, {"method": "wanda"}, ids, progress=False)
    assert result.calibration["windows"] == 4
    with pytest.raises(ConfigError, match="shape"):
        netslim.compress(llama_model, {"method": "wanda"}, ids[0], progress=False)


def test_evaluate_reports_protocol(tiny_folder):
    folder, text = tiny_folder
    lm = netslim.load_model(str(folder))
    ev = netslim.evaluate(lm, data=str(text), seqlen=32, windows=5, progress=False)
    proto = ev.perplexity.protocol()
    assert proto["windows"] == 5 and proto["tokens"] == 160 and proto["predicted_tokens"] == 155
    assert 1 < ev.ppl < 1e4 and ev.size.params == sum(p.numel() for p in lm.model.parameters())


def test_perplexity_matches_a_direct_computation(llama_model):
    from netslim.data.windows import TokenWindows
    from netslim.eval.perplexity import perplexity

    ids = torch.randint(3, 120, (3, 20))
    with torch.no_grad():
        logits = llama_model(ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    result = perplexity(llama_model, TokenWindows(ids, "t", 20, None, False), progress=False)
    assert result.ppl == pytest.approx(float(nll.exp()), rel=1e-5)


@pytest.mark.parametrize("source", ["no/such/dir/", "./missing", "missing.gguf", "no/such/model.gguf"])
def test_missing_models_get_one_line_errors(source):
    with pytest.raises(ModelNotFoundError, match="not found") as info:
        netslim.load_model(source)
    assert "\n" not in str(info.value)
