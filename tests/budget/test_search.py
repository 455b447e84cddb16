"""netslim search on a tiny model: budgets honoured to the byte, outputs, resume, errors before work."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import netslim.budget.run as run
from netslim.budget.space import Space
from netslim.cli import app
from netslim.engine.execution import Execution
from netslim.job import Protocol
from tiny_models import eval_text_beside

SPACE = Space(bits=(2, 3, 4, 8), groups=(16, 32))


@pytest.fixture
def setup(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))
    folder, text = tiny_folder
    protocol = Protocol(seqlen=32, calib=str(text), calib_windows=4, eval=str(eval_text_beside(text)), eval_windows=3)
    return str(folder), protocol, tmp_path


def test_size_budget_from_the_command_line(setup):
    folder, protocol, tmp_path = setup
    out = tmp_path / "best"
    result = CliRunner().invoke(app, ["search", folder, "--budget", "size=90KB", "--out", str(out), "--bits", "2",
                                      "--bits", "3", "--bits", "4", "--bits", "8", "--groups", "16", "--groups", "32",
                                      "--calib", protocol.calib, "--calib-windows", "4", "--seqlen", "32",
                                      "--eval", protocol.eval, "--eval-windows", "3"])
    assert result.exit_code == 0, result.output
    pareto = json.loads((out / "pareto.json").read_text())
    final, chosen = pareto["final"], pareto["chosen"]
    assert final["bytes_on_disk"] == final["bytes_predicted"] == chosen["bytes"] <= 90_000
    assert all(p["bytes"] <= 90_000 for p in pareto["points"] if p["kind"] == "candidate")
    measured = [p for p in pareto["points"] if p["bytes"] <= 90_000]
    assert chosen["nll"] == min(p["nll"] for p in measured)  # the best measured point within the budget
    assert {p["kind"] for p in pareto["points"]} == {"baseline", "candidate"}
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "(chosen)" in (out / "report.md").read_text()
    recipe = (out / "model" / "recipe.yaml").read_text()
    assert "layers:" in recipe and "method: gptq" in recipe
    code = ("import json, netslim; m = netslim.load({!r}); "
            "print(json.dumps(netslim.evaluate(m, data={!r}, seqlen=32, windows=3, progress=False).ppl))")
    reloaded = subprocess.run([sys.executable, "-c", code.format(str(out / "model"), protocol.eval)],
                              capture_output=True, text=True, check=True)
    assert json.loads(reloaded.stdout.splitlines()[-1]) == pytest.approx(final["ppl"], rel=1e-4)


def test_ppl_budget_and_resume(setup, monkeypatch):
    folder, protocol, tmp_path = setup
    first = run.search(folder, "ppl=1.01x", tmp_path / "a", protocol, SPACE, progress=False)
    assert first.chosen["ppl_ratio"] <= 1.01
    assert first.chosen["bytes"] == min(p["bytes"] for p in first.pareto["points"] if p["ppl_ratio"] <= 1.01)

    def never(*args, **kwargs):
        raise AssertionError("resumed work was done again")

    monkeypatch.setattr(run, "measure_proxies", never)
    monkeypatch.setattr(run, "_measured", never)
    again = run.search(folder, "ppl=1.01x", tmp_path / "b", protocol, SPACE, progress=False)
    assert again.chosen == first.chosen


def test_a_bfloat16_search_runs_every_step_in_bfloat16(setup):
    folder, protocol, tmp_path = setup
    out = tmp_path / "bf16"
    result = CliRunner().invoke(app, ["search", folder, "--budget", "size=100KB", "--out", str(out), "--bits", "4",
                                      "--bits", "8", "--groups", "16", "--calib", protocol.calib, "--calib-windows", "4",
                                      "--seqlen", "32", "--eval", protocol.eval, "--eval-windows", "3",
                                      "--dtype", "bfloat16", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["execution"]["dtype"] == "bfloat16" and pareto["execution"]["batch_size"] == 2
    report = json.loads((out / "model" / "report.json").read_text())  # the final compression too
    assert report["protocol"]["execution"]["dtype"] == "bfloat16"
    assert pareto["final"]["bytes_on_disk"] == pareto["final"]["bytes_predicted"] <= 100_000


@pytest.mark.parametrize("budget, kwargs, message", [
    ("speedup=1.5x", {"runtime": "llama.cpp"}, "runtime 'llama.cpp'"),
    ("size=90KB", {"runtime": "llama.cpp"}, "runtime 'llama.cpp'"),
    ("size=1KB", {}, "the smallest model this space allows"),
    ("size=10GB", {}, "the model already fits"),
    ("size=90KB", {"max_minutes": 0}, "max_minutes=0"),
    ("size=90KB", {"execution": Execution(offload=True)}, "leave out --offload"),
])
def test_bad_searches_fail_before_work(setup, monkeypatch, budget, kwargs, message):
    folder, protocol, tmp_path = setup
    monkeypatch.setattr(run, "measure_proxies", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(run.NetslimError, match=message):
        run.search(folder, budget, tmp_path / "x", protocol, SPACE, progress=False, **kwargs)
    assert not (tmp_path / "x").exists()


def test_an_existing_output_is_refused_before_work(setup, monkeypatch):
    folder, protocol, tmp_path = setup
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("user data")
    monkeypatch.setattr(run, "measure_proxies", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(run.NetslimError, match="already exists"):
        run.search(folder, "size=90KB", tmp_path / "taken", protocol, SPACE, progress=False, overwrite=False)
    assert (tmp_path / "taken" / "mine.txt").read_text() == "user data"
