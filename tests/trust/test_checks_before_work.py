"""Issue 12, items 6, 7 and 9: everything that can be checked is checked before any work."""

import json

import pytest
import torch
from typer.testing import CliRunner

import netslim
import netslim.job
from netslim.cli import app
from netslim.errors import ConfigError, NetslimError
from netslim.job import Protocol, compress_job
from tiny_models import eval_text_beside, tiny_model

PROTO = dict(seqlen=32, calib_windows=2, eval_windows=2, seed=0)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the job reads any model weight."""

    def never(*_a, **_k):
        raise AssertionError("the model's weights were read before the mistake was found")

    monkeypatch.setattr(netslim.job, "load_model", never)


def _job(folder, text, recipe, out, **proto):
    protocol = Protocol(calib=str(text), eval=str(eval_text_beside(text)), **{**PROTO, **proto})
    return compress_job(str(folder), recipe, out, protocol, progress=False)


@pytest.mark.parametrize(
    "recipe, message",
    [
        ([{"method": "gptq", "bits": 4}, {"method": "wanda"}], "stage 2: wanda cannot act on model.layers.0.self_attn.q_proj, a quantized layer"),
        ([{"method": "rtn"}, {"method": "gptq"}], "stage 2: gptq cannot act"),
        ([{"method": "sparsegpt", "bits": 4}, {"method": "svd_llm"}], "stage 2: svd_llm cannot act"),
        ([{"method": "svd_llm"}, {"method": "gptq"}], "a factorized_linear layer"),
        ([{"method": "svd"}, {"method": "width"}], "stage 2: width cannot act"),
        ([{"method": "slicegpt"}, {"method": "slicegpt"}], "already sliced"),
        ([{"method": "depth", "ratio": 0.5}, {"method": "depth", "ratio": 0.5}], "stage 2: depth: ratio=0.5 of 1 blocks rounds to 0"),
        ([{"method": "depth", "ratio": 0.9}], "cannot remove 2 of 2 blocks"),
        ([{"method": "depth", "remove": [0, 1]}], "cannot remove 2 of 2 blocks"),
        ([{"method": "wanda", "ignore": ["model.layer.0.*"]}], "ignore pattern 'model.layer.0.*' matches no layer"),
        ([{"method": "wanda", "block_ratios": [0.5, 0.5, 0.5]}], "block_ratios has 3 entries; the model has 2 blocks"),
        ([{"method": "width", "block_units": [0, 0, 0], "block_neurons": [1, 1, 1]}], "block_units has 3 entries"),
        ([{"method": "svd", "ranks": {"model.layers.0.mlp.up_proj": 500}}], "use 1 to 64"),
    ],
)
def test_a_recipe_that_cannot_run_is_refused_before_loading(tiny_folder, tmp_path, no_loading, recipe, message):
    folder, text = tiny_folder
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[").replace("*", r"\*")):
        _job(folder, text, recipe, tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_seqlen_beyond_positions_and_bad_protocol_are_refused_before_loading(tiny_folder, tmp_path, no_loading):
    folder, text = tiny_folder
    with pytest.raises(ConfigError, match="seqlen=256 exceeds the model's 128 positions"):
        _job(folder, text, [{"method": "wanda"}], tmp_path / "o", seqlen=256)
    for bad in (dict(seqlen=1), dict(calib_windows=0), dict(eval_windows=0)):
        with pytest.raises(ConfigError):
            _job(folder, text, [{"method": "wanda"}], tmp_path / "o", **bad)


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_seqlen_beyond_positions_in_the_api(family):
    model = tiny_model(family)  # 128 positions
    ids = torch.randint(3, 120, (2, 200))
    with pytest.raises(ConfigError, match="exceeds the model's 128 positions"):
        netslim.compress(model, {"method": "wanda"}, ids, progress=False)


def test_nm_pattern_needs_divisible_widths(tmp_path, no_loading):
    import transformers as T

    from tiny_models import char_tokenizer

    config = T.LlamaConfig(hidden_size=68, intermediate_size=136, num_hidden_layers=2, num_attention_heads=2,
                           num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)
    folder = tmp_path / "odd"
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    text = tmp_path / "t.txt"
    text.write_text("some text " * 200)
    with pytest.raises(ConfigError, match="pattern 4:8 needs input widths divisible by 8, but model.layers.0.self_attn.q_proj has 68"):
        _job(folder, text, [{"method": "wanda", "pattern": "4:8"}], tmp_path / "o")


def test_chains_that_make_sense_still_run(tiny_folder, tmp_path):
    folder, text = tiny_folder
    result = _job(folder, text, [{"method": "wanda"}, {"method": "gptq", "bits": 4, "group_size": 16},
                                 {"method": "eora", "rank": 4}], None)
    assert result.report.compressed.ppl > 0


def test_nan_weights_are_refused_and_reports_stay_valid_json(tiny_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, text = tiny_folder
    state = load_file(folder / "model.safetensors")
    state["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(NetslimError, match="NaN or infinite values in 'model.layers.1.mlp.up_proj.weight'"):
        _job(folder, text, [{"method": "magnitude"}], tmp_path / "o")
    assert not (tmp_path / "o").exists()
    from netslim.eval.report import json_safe

    json.dumps(json_safe({"ppl": float("inf"), "x": [float("nan"), 1.0]}), allow_nan=False)


def test_calibration_tensors_must_be_token_ids(llama_model):
    with pytest.raises(ConfigError, match="integer tensor of token ids, got torch.float32"):
        netslim.compress(llama_model, {"method": "wanda"}, torch.rand(4, 32), progress=False)
    with pytest.raises(ConfigError, match=r"must lie in \[0, 128\)"):
        netslim.compress(llama_model, {"method": "wanda"}, torch.full((4, 32), 500), progress=False)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: netslim.compress(m, 42), "got int"),
        (lambda m: netslim.compress(m, "wanda"), "not the string 'wanda'"),
        (lambda m: netslim.compress(42, {"method": "wanda"}), "got int"),
        (lambda m: netslim.evaluate(3.5), "got float"),
    ],
)
def test_api_calls_with_wrong_types_get_one_line_errors(llama_model, call, message):
    with pytest.raises(ConfigError, match=message) as err:
        call(llama_model)
    assert "\n" not in str(err.value)


runner = CliRunner()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "wanda", "--set", "method=magnitude"], "--set method=... is not a setting"),
        (["--method", "wanda", "--ratio", "0.5", "--set", "ratio=0.6"], "--ratio and --set ratio=... both given"),
        (["--method", "wanda", "--pattern", "2:4", "--set", "pattern=4:8"], "--pattern and --set pattern=... both given"),
    ],
)
def test_cli_setting_conflicts(tiny_folder, tmp_path, args, message):
    folder, _ = tiny_folder
    result = runner.invoke(app, ["compress", str(folder), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.stderr.strip().splitlines()[-1]


def test_ctrl_c_says_how_to_resume(tiny_folder, tmp_path, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(netslim.job, "compress_job", interrupted)
    folder, _ = tiny_folder
    result = runner.invoke(app, ["compress", str(folder), "--out", str(tmp_path / "o"), "--method", "wanda"])
    assert result.exit_code == 130 and "run the same command again to resume" in result.stderr


def test_the_api_refuses_a_chain_before_touching_the_model(llama_model, token_windows):
    before = {k: v.clone() for k, v in llama_model.state_dict().items()}
    with pytest.raises(ConfigError, match="stage 2: magnitude cannot act on .* a quantized layer"):
        netslim.compress(llama_model, [{"method": "rtn"}, {"method": "magnitude"}], token_windows, progress=False)
    assert all(torch.equal(before[k], v) for k, v in llama_model.state_dict().items())


def test_a_folder_without_tokenizer_gets_a_cli_sized_message(tmp_path):
    folder = tmp_path / "no-tok"
    tiny_model("llama").save_pretrained(folder)
    result = runner.invoke(app, ["eval", str(folder)])
    last = result.stderr.strip().splitlines()[-1]
    assert result.exit_code == 2 and "has none: add its tokenizer files" in last and "pass tokenizer=" not in last


@pytest.mark.parametrize("recipe", [[{"method": "svd_llm"}], [{"method": "slicegpt"}],
                                    [{"method": "width", "score": "flap"}], [{"method": "gptq"}, {"method": "eora"}]])
def test_format_dense_of_what_plain_transformers_cannot_hold_is_refused_before_loading(tiny_folder, tmp_path, no_loading,
                                                                                         recipe):
    folder, text = tiny_folder
    protocol = Protocol(calib=str(text), eval=str(eval_text_beside(text)), **PROTO)
    with pytest.raises(ConfigError, match="--format dense .* cannot hold"):
        compress_job(str(folder), recipe, tmp_path / "o", protocol, progress=False, storage_format="dense")


@pytest.mark.parametrize("recipe", [[{"method": "wanda"}],
                                    [{"method": "magnitude"}, {"method": "recover", "data": "TEXT", "loss": "ce"}]])
def test_calibration_or_recovery_on_the_evaluation_text_is_refused_before_loading(tiny_folder, tmp_path, no_loading,
                                                                                   recipe):
    folder, text = tiny_folder
    recipe = [{k: str(text) if v == "TEXT" else v for k, v in stage.items()} for stage in recipe]
    calib = str(text) if recipe[0]["method"] == "wanda" else str(eval_text_beside(text))
    protocol = Protocol(calib=calib, eval=str(text), **PROTO)
    with pytest.raises(ConfigError, match="overlaps the evaluation text"):
        compress_job(str(folder), recipe, tmp_path / "o", protocol, progress=False)
