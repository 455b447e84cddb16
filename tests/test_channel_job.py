"""``netslim compress`` on a vision/encoder model: the one job, its typed report, its folder, the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from cnn_models import build
from typer.testing import CliRunner

import netslim
from netslim.cli import app
from netslim.errors import ConfigError
from netslim.eval.vision import agreement
from netslim.job import compress_job
from netslim.models import tasks, zoo

NAME = "tiny-mobile"


def _tiny_task() -> tasks.ModelTask:
    model, _ = build("mobile_se", seed=0)
    model.eval()
    images = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(images)

    def score(m):
        with torch.inference_mode():
            return agreement(reference, m.eval()(images))

    return tasks.ModelTask(
        name=NAME, model=model, tokenizer=None, example_inputs=(images[:1],), forward=lambda m: m(images[:1]),
        score=score, loss_fn=lambda m: F.cross_entropy(m(images), reference.argmax(-1)), round_to=2,
    )


@pytest.fixture
def tiny_task(monkeypatch):
    """A test CNN registered as a zoo model and task, for the job and for netslim.load."""
    monkeypatch.setitem(tasks._TASKS, NAME, _tiny_task)
    monkeypatch.setitem(zoo._LOADERS, NAME, lambda: zoo.PretrainedModel(NAME, build("mobile_se", seed=0)[0].eval()))
    return NAME


def test_job_report_and_reload(tiny_task, tmp_path):
    out = tmp_path / "slim"
    result = compress_job(tiny_task, {"method": "channels", "ratio": 0.4, "measure": "macs", "importance": "taylor"}, out)
    report = json.loads((out / "report.json").read_text())
    base, comp = report["baseline"], report["compressed"]
    assert report["kind"] == "channels" and report["model"] == NAME
    assert 0.4 <= report["macs_removed"] < 0.5 and comp["params"] < base["params"]
    assert base["scores"] == {"top1": 1.0, "top5": 1.0}  # the dense model agrees with itself
    assert comp["latency_ms"] > 0 and report["speedup"] == pytest.approx(base["latency_ms"] / comp["latency_ms"])
    assert report["recipe"][0]["round_to"] == 2  # the task's default, stated in the report
    assert all(g["kept"] % 2 == 0 or g["kept"] == g["units"] for g in report["layers"])
    assert comp["size_bytes"] == (out / "model.safetensors").stat().st_size
    for name in ("slim_plan.json", "netslim.json", "recipe.yaml", "report.md"):
        assert (out / name).is_file(), name
    assert "| pruned |" in (out / "report.md").read_text()
    assert result.report.as_dict() == report  # report.json is the typed report

    loaded = netslim.load(out)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model.eval()(x))
    assert sum(p.numel() for p in loaded.model.parameters()) == comp["params"]


def test_recipe_rejects_llm_methods_and_vice_versa(tiny_task, tmp_path):
    with pytest.raises(ConfigError, match="'wanda' needs a causal LM; tiny-mobile takes method channels"):
        compress_job(tiny_task, {"method": "wanda", "ratio": 0.5}, tmp_path / "o")
    # An LLM recipe with a channels stage fails before the model is loaded (this path does not exist).
    with pytest.raises(ConfigError, match="'channels' prunes vision and encoder models"):
        compress_job(str(tmp_path / "no-model"), {"method": "channels", "ratio": 0.3, "measure": "macs"}, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_unreachable_target_is_one_line(tiny_task, tmp_path):
    with pytest.raises(ConfigError, match="cannot be reached"):
        compress_job(tiny_task, {"method": "channels", "ratio": 0.99, "measure": "macs", "max_group_ratio": 0.2}, None)


def test_cli_compress_and_info(tiny_task, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["compress", NAME, "--method", "channels", "--set", "ratio=0.3",
                                 "--set", "allocation=global", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "of parameters" in result.output and "pruned" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"][0]["allocation"] == "global" and report["params_removed"] >= 0.3
    info = runner.invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and "format slim_plan" in info.output and "channels" in info.output
    perplexity = runner.invoke(app, ["eval", str(out)])
    assert perplexity.exit_code == 2 and "not a language model" in perplexity.stderr

    again = runner.invoke(app, ["compress", NAME, "--method", "channels", "--set", "ratio=0.3", "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "channels", "--set", "target_flop=0.3"], "unknown setting 'target_flop'"),
        (["--method", "channels", "--set", "target_flops"], "--set expects KEY=VALUE"),
        (["--method", "channels", "--ratio", "1.5", "--set", "measure=macs"], "ratio=1.5"),
        (["--method", "gptq", "--set", "bits=4"], "'gptq' needs a causal LM"),
        (["--method", "channels", "--ratio", "0.3", "--set", "measure=macs", "--set", "importance=2:4"], "importance='2:4'"),
    ],
)
def test_cli_errors(tiny_task, tmp_path, args, message):
    result = CliRunner().invoke(app, ["compress", NAME, "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert not (tmp_path / "o").exists()


def test_packed_format_of_a_graph_pruned_model_is_refused_before_work(tiny_task, tmp_path, monkeypatch):
    def no_loading(_name):
        raise AssertionError("the model was loaded before the format was checked")

    monkeypatch.setattr("netslim.job.load_task", no_loading)
    with pytest.raises(ConfigError, match="^tiny-mobile is stored as a dense pruned model; use --format auto or dense$"):
        compress_job(tiny_task, {"method": "channels", "ratio": 0.3}, tmp_path / "o", storage_format="packed")
    assert not (tmp_path / "o").exists()


def test_save_refuses_packed_for_a_graph_pruned_result(tiny_task, tmp_path):
    result = compress_job(tiny_task, {"method": "channels", "ratio": 0.3}, None)
    with pytest.raises(ConfigError, match="stored as its plan and dense weights; use format auto or dense"):
        netslim.save(result, tmp_path / "p", format="packed")
    assert not (tmp_path / "p").exists()
    netslim.save(result, tmp_path / "d")  # auto: the plan and its weights
    assert (tmp_path / "d" / "slim_plan.json").is_file() and (tmp_path / "d" / "report.json").is_file()
