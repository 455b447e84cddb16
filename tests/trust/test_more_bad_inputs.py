"""Issue 12: the cases an outside battery of bad inputs found (each fails on the code before)."""

import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

import netslim
from netslim.errors import ConfigError, NetslimError
from tiny_models import char_tokenizer, tiny_model

EVAL = ["--eval", None, "--seqlen", "32", "--eval-windows", "2"]


def _cli(*args, cwd=None):
    """The installed command's behaviour: ``netslim.cli.main`` in a fresh process."""
    return subprocess.run([sys.executable, "-c", "from netslim.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def _one_error_line(proc, message):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("error: ") and message in lines[-1], lines[-1]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "llama"
    tiny_model("llama").save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    (tmp_path / "text.txt").write_text(" ".join(f"the quick brown fox {i} jumps." for i in range(300)))
    return path


@pytest.mark.parametrize("args, message", [
    (["compress", "m", "--method", "wanda", "--ratio", "abc", "--out", "o"], "Invalid value for '--ratio'"),
    (["compress", "m", "--method", "wanda", "--bogus", "1", "--out", "o"], "No such option: --bogus"),
    (["nosuchcommand"], "No such command"),
])
def test_usage_mistakes_are_one_error_line(args, message):
    _one_error_line(_cli(*args), message)


def test_weights_that_do_not_fit_the_config_are_refused(folder):
    state = load_file(folder / "model.safetensors")
    del state["model.layers.0.self_attn.q_proj.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NetslimError, match="1 tensors missing, e.g. model.layers.0.self_attn.q_proj.weight"):
        netslim.load_model(str(folder))


def test_a_config_with_fewer_layers_than_the_weights_is_refused(folder):
    config = (folder / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1')
    (folder / "config.json").write_text(config)
    with pytest.raises(NetslimError, match="not in the config"):
        netslim.load_model(str(folder))


def test_eval_refuses_nan_weights_and_overflowing_outputs(folder, tmp_path):
    state = load_file(folder / "model.safetensors")
    state["lm_head.weight"] *= 1e30  # finite weights, infinite loss
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    args = [a if a is not None else tmp_path / "text.txt" for a in EVAL]
    _one_error_line(_cli("eval", folder, *args), "is not finite")
    state["lm_head.weight"][0, 0] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    _one_error_line(_cli("eval", folder, *args), "NaN or infinite values in 'lm_head.weight'")


def test_info_checks_the_weight_files(folder, tmp_path):
    out = tmp_path / "out"
    result = netslim.compress(netslim.load_model(str(folder)), {"method": "magnitude"}, progress=False)
    netslim.save(result, out)
    (out / "model.safetensors").unlink()
    _one_error_line(_cli("info", out), "model.safetensors' is missing")


def test_recipes_with_a_key_twice_or_thousands_of_stages_are_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("- {method: wanda, ratio: 0.5, method: magnitude}\n")
    with pytest.raises(ConfigError, match="'method' is given twice"):
        netslim.load_recipe(twice)
    json_twice = tmp_path / "twice.json"
    json_twice.write_text('[{"method": "wanda", "ratio": 0.5, "ratio": 0.6}]')
    with pytest.raises(ConfigError, match="'ratio' is given twice"):
        netslim.load_recipe(json_twice)
    with pytest.raises(ConfigError, match="at most 64"):
        netslim.parse_recipe([{"method": "magnitude"}] * 1000)


def test_a_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    (tmp_path / "models").mkdir()
    proc = _cli("eval", "models/nope", cwd=tmp_path)
    _one_error_line(proc, "model 'models/nope' not found")
    assert "huggingface.co" not in proc.stderr


def test_python_api_misuse_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ratio=2: must be in"):
        netslim.WandaConfig(ratio=2)
    result = netslim.compress(tiny_model("llama"), {"method": "magnitude"}, progress=False)
    with pytest.raises(ConfigError, match="folder path, got int"):
        netslim.save(result, 42)
    with pytest.raises(ConfigError, match="result of netslim.compress, got str"):
        netslim.save("x", tmp_path / "o")
    assert not (tmp_path / "o").exists()
