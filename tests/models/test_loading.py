"""Loading models: no code from a model folder runs, and broken files get one line naming them."""

from __future__ import annotations

import ast
import json
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers as T
from typer.testing import CliRunner

import netslim
from netslim.cli import app
from netslim.errors import ModelNotFoundError, NetslimError, UnsupportedModelError
from netslim.models import loading, zoo
from netslim.models.loading import (
    CustomCodeError,
    ModelFileError,
    load_hf_folder,
    load_model,
    load_tokenizer,
    read_model_config,
)
from netslim.models.registry import family_for_model_type, supported_model_types

SRC = Path(loading.__file__).parent
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('the folder code ran')\n"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))


def _copy(tiny_folder, tmp_path, name) -> Path:
    folder, _ = tiny_folder
    return Path(shutil.copytree(folder, tmp_path / name))


def _halve(file: Path) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _one_line(info, cls=NetslimError) -> str:
    assert isinstance(info.value, cls)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def _custom_code_folder(tmp_path, model_type: str) -> tuple[Path, Path]:
    """A folder whose config.json maps the Auto classes to evil.py, which writes a marker if run."""
    folder, marker = tmp_path / f"custom-{model_type}", tmp_path / f"ran-{model_type}.txt"
    folder.mkdir()
    (folder / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = {
        "model_type": model_type,
        "architectures": ["EvilForCausalLM"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilForCausalLM"},
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


# --- no code from a model folder ever runs -------------------------------------------------------


@pytest.mark.parametrize("model_type", ["evil", "llama"])
def test_auto_map_in_config_is_refused_before_anything_runs(tmp_path, model_type):
    folder, marker = _custom_code_folder(tmp_path, model_type)
    for load in (load_model, lambda f: load_hf_folder(f, None, "x"), read_model_config):
        with pytest.raises(CustomCodeError, match=r"config.json' has an auto_map \(evil.EvilConfig\)") as info:
            load(folder)
        assert "never" in _one_line(info, UnsupportedModelError)
    (folder / "tokenizer_config.json").write_text("{}")  # a tokenizer file, so load_tokenizer looks
    with pytest.raises(CustomCodeError):
        load_tokenizer(folder)
    assert not marker.exists()
    runpy.run_path(str(folder / "evil.py"))  # the marker does appear when the file is executed
    assert marker.exists()


def test_auto_map_in_tokenizer_config_is_refused(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "tok-custom")
    marker = tmp_path / "ran.txt"
    (folder / "evil_tok.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["evil_tok.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for load in (load_model, load_tokenizer):
        with pytest.raises(CustomCodeError, match="tokenizer_config.json' has an auto_map .evil_tok.Evil") as info:
            load(folder)
        _one_line(info)
    assert not marker.exists()


def test_netslim_output_folders_are_checked_too(tmp_path):
    folder, marker = _custom_code_folder(tmp_path, "evil")
    (folder / loading.NETSLIM_MARKER).write_text(json.dumps({"format": "packed"}))
    with pytest.raises(CustomCodeError):
        load_model(folder)
    assert not marker.exists()


def test_cli_asks_nothing_and_runs_nothing_even_with_yes_on_stdin(tmp_path):
    folder, marker = _custom_code_folder(tmp_path, "evil")
    env = {**os.environ, "NETSLIM_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "from netslim.cli import app; app()", "eval", str(folder)],
        input="y\n", capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "auto_map" in last and "never" in last
    assert "Traceback" not in result.stderr and "[y/N]" not in result.stdout + result.stderr
    assert not marker.exists()


def test_every_from_pretrained_refuses_remote_code():
    calls = 0
    for file in (SRC / "loading.py", SRC / "folder.py", SRC / "zoo.py"):
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_pretrained":
                calls += 1
                kwargs = {k.arg: k.value for k in node.keywords}
                value = kwargs.get("trust_remote_code")
                assert isinstance(value, ast.Constant) and value.value is False, f"{file.name}:{node.lineno}"
    assert calls >= 8


def test_zoo_refuses_a_package_folder_with_custom_code(tmp_path, monkeypatch):
    folder, marker = _custom_code_folder(tmp_path, "bert")
    monkeypatch.setattr(zoo, "minilm_folder", lambda: folder)
    with pytest.raises(CustomCodeError):
        zoo.load_pretrained("all-minilm-l6-v2")
    assert not marker.exists()


# --- config.json ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "message"), [
    (b"not json{", "config.json' is not valid JSON .*line 1 column 1"),
    (b"", "config.json' is not valid JSON"),
    (b"[1, 2]", "config.json' holds a JSON list, not an object"),
    (b'{"hidden_size": 8}', "config.json' has no model_type"),
    (b'{"model_type": 3}', "config.json' has no model_type"),
    (b"\xff\xfe{}", "config.json' is not a UTF-8 JSON file"),
])
def test_garbage_config_names_the_file(tiny_folder, tmp_path, content, message):
    folder = _copy(tiny_folder, tmp_path, "garbage")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(folder)
    assert str(folder / "config.json") in _one_line(info)


def test_unknown_model_type_is_unsupported(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "unknown")
    (folder / "config.json").write_text(json.dumps({"model_type": "no_such_family"}))
    with pytest.raises(UnsupportedModelError, match="model type 'no_such_family' .*does not know it; supported: "):
        load_model(folder)


@pytest.mark.parametrize(("name", "model", "reason"), [
    ("t5", lambda: T.T5Model(T.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64)),
     "encoder-decoder model"),
    ("bert", lambda: T.BertModel(T.BertConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, vocab_size=64)), "encoder"),
])
def test_models_that_are_not_causal_lms_are_unsupported_like_a_family(tmp_path, name, model, reason):
    model().save_pretrained(tmp_path / name)
    expected = f"model type '{name}' .* is not supported: it is an {reason}"
    with pytest.raises(UnsupportedModelError, match=expected) as info:
        load_model(tmp_path / name)
    message = _one_line(info)
    with pytest.raises(UnsupportedModelError) as family:  # how a family without an adapter is reported
        family_for_model_type("gpt_neox")
    tail = "; supported: " + ", ".join(supported_model_types())
    assert message.endswith(tail) and str(family.value).endswith(tail)


# --- weights ----------------------------------------------------------------------------------------


def test_truncated_safetensors_names_the_file(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "truncated")
    _halve(folder / "model.safetensors")
    with pytest.raises(ModelFileError, match="model.safetensors' is truncated: it has .* bytes") as info:
        load_model(folder)
    assert str(folder / "model.safetensors") in _one_line(info)


@pytest.mark.parametrize("content", [b"", b"\x05", os.urandom(4096), b"\x04\x00\x00\x00\x00\x00\x00\x00[1, ]"])
def test_foreign_safetensors_names_the_file(tiny_folder, tmp_path, content):
    folder = _copy(tiny_folder, tmp_path, "foreign")
    (folder / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelFileError, match="model.safetensors' is (truncated or )?not a safetensors file") as info:
        load_model(folder)
    _one_line(info)


def test_sharded_weights_are_checked(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "sharded")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    weight_map = {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelFileError, match="lists model-00002-of-00002.safetensors, which is missing") as info:
        load_model(folder)
    _one_line(info)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": weight_map["a"]}}))
    _halve(folder / "model-00001-of-00002.safetensors")
    with pytest.raises(ModelFileError, match="model-00001-of-00002.safetensors' is truncated"):
        load_model(folder)


def test_a_folder_without_weights(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "no-weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="has a config.json but no weights") as info:
        load_model(folder)
    _one_line(info)


# --- GGUF ---------------------------------------------------------------------------------------------


def _write_gguf(path: Path, architecture: str = "llama") -> Path:
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_context_length(16)
    writer.add_embedding_length(64)
    writer.add_tensor("token_embd.weight", np.arange(64 * 64, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("damage", "message"), [
    ("halve", "GGUF file '.*' is truncated"),
    ("halve-header", "GGUF file '.*' is truncated or corrupt"),
    ("random", "' is not a GGUF file .*does not start with the bytes 'GGUF'"),
    ("empty", "' is not a GGUF file"),
    ("bad-version", "GGUF file '.*' is truncated or corrupt"),
])
def test_damaged_gguf_names_the_file(tmp_path, damage, message):
    path = _write_gguf(tmp_path / "model.gguf")
    data = path.read_bytes()
    path.write_bytes({
        "halve": data[: len(data) // 2],
        "halve-header": data[:64],
        "random": os.urandom(len(data)),
        "empty": b"",
        "bad-version": b"GGUF" + os.urandom(len(data) - 4),
    }[damage])
    with pytest.raises(ModelFileError, match=message) as info:
        netslim.load_model(str(path))
    assert str(path) in _one_line(info)
    assert not list((tmp_path / "cache").glob("converted/*/config.json"))


@pytest.mark.parametrize(("architecture", "message"), [
    ("t5", "model type 't5' .*GGUF file .* is not supported: it is an encoder-decoder model"),
    ("rwkv6", "GGUF architecture 'rwkv6' .* is not supported: transformers cannot load it"),
])
def test_gguf_of_an_unsupported_architecture(tmp_path, architecture, message):
    path = _write_gguf(tmp_path / f"{architecture}.gguf", architecture)
    with pytest.raises(UnsupportedModelError, match=message) as info:
        load_model(path)
    assert _one_line(info).endswith("supported: " + ", ".join(supported_model_types()))


# --- tokenizers -------------------------------------------------------------------------------------


def test_a_folder_without_tokenizer_files_has_no_tokenizer(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    assert load_tokenizer(folder) is None
    assert load_model(folder).tokenizer is None


def test_the_tiny_folder_loads_with_its_tokenizer(tiny_folder):
    folder, _ = tiny_folder
    lm = load_model(folder)
    assert lm.tokenizer is not None and lm.tokenizer("ab")["input_ids"] == [97, 98]


@pytest.mark.parametrize(("name", "damage", "message"), [
    ("tokenizer.json", "halve", "tokenizer.json' is not valid JSON"),
    ("tokenizer.json", '{"version": "1.0"}', "tokenizer file '.*tokenizer.json' does not load"),
    ("tokenizer.json", "remove", "it has tokenizer_config.json but no vocabulary file"),
    ("tokenizer_config.json", "halve", "tokenizer_config.json' is not valid JSON"),
])
def test_broken_tokenizers_name_the_file(tiny_folder, tmp_path, name, damage, message):
    folder = _copy(tiny_folder, tmp_path, "broken-tokenizer")
    file = folder / name
    if damage == "halve":
        _halve(file)
    elif damage == "remove":
        file.unlink()
    else:
        file.write_text(damage)
    for load in (load_tokenizer, load_model):
        with pytest.raises(ModelFileError, match=message) as info:
            load(folder)
        assert str(folder) in _one_line(info)


def test_cli_reports_a_broken_tokenizer_in_one_line(tiny_folder, tmp_path):
    folder = _copy(tiny_folder, tmp_path, "cli-tokenizer")
    _halve(folder / "tokenizer.json")
    result = CliRunner().invoke(app, ["eval", str(folder), "--eval", str(tiny_folder[1])])
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "tokenizer.json' is not valid JSON" in last
    assert "pass tokenizer=" not in result.output
