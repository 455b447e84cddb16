"""--offload: a model read, compressed, evaluated and written one block at a time gives the
weights, the perplexities and the folder of the same job in memory; what it cannot run is
refused in one line before any work."""

import json
import subprocess
import sys

import pytest
import torch

from netslim.data.windows import TokenWindows
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.execution import Execution
from netslim.errors import ConfigError, ModelFileError
from netslim.eval.perplexity import head_slices, perplexity, perplexity_from_hidden
from netslim.job import Protocol, compress_job
from netslim.models.adapter import ModelAdapter
from netslim.models.lazy import open_lazy
from tiny_models import TINY_CONFIGS, char_tokenizer, eval_text_beside, tiny_model

RECIPES = {
    "gptq": [{"method": "gptq", "bits": 4, "group_size": 32}],
    "sparsegpt+eora": [{"method": "sparsegpt", "ratio": 0.5}, {"method": "eora", "rank": 4}],
    "wanda-owl": [{"method": "wanda", "ratio": 0.5, "allocation": "owl"}],
    "rtn": [{"method": "rtn", "bits": 8}],
}


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_perplexity_from_the_last_hidden_states_is_the_models(family):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (3, 24), generator=torch.Generator().manual_seed(1))
    windows = TokenWindows(ids, "random tokens", 24, 0, False)
    adapter = ModelAdapter.from_model(model)
    with torch.no_grad():
        hidden, calls = capture_block_inputs(adapter, ids, batch_size=2)
        for index, block in enumerate(adapter.blocks):
            hidden = run_block(block, hidden, calls[index], 2)
    softcap = getattr(model.config, "final_logit_softcapping", None)
    whole = perplexity_from_hidden(adapter.final_norm, head_slices(adapter.lm_head), hidden, windows, 2, softcap)
    weight, bias = adapter.lm_head.weight, adapter.lm_head.bias
    sliced = perplexity_from_hidden(  # the vocabulary in uneven slices, as a checkpoint is read
        adapter.final_norm, lambda: [(w, None if bias is None else bias[s:s + len(w)])
                                     for s, w in zip(range(0, len(weight), 37), weight.split(37))],
        hidden, windows, 2, softcap)
    reference = perplexity(model, windows, progress=False).ppl
    assert whole.ppl == pytest.approx(reference, rel=1e-5) and sliced.ppl == pytest.approx(reference, rel=1e-5)


def test_a_lazy_model_loads_one_block_at_a_time(tiny_folder):
    folder, _ = tiny_folder
    lazy = open_lazy(folder, torch.float32, torch.device("cpu"), str(folder))
    reference = tiny_model("llama")
    blocks = lazy.adapter.blocks
    assert all(p.is_meta for p in lazy.model.parameters())  # nothing is read until needed
    lazy.load_outside()
    assert torch.equal(lazy.model.lm_head.weight, reference.lm_head.weight)
    lazy.unload_outside()
    assert lazy.model.lm_head.weight.is_meta and lazy.model.model.embed_tokens.weight.is_meta
    ids = torch.tensor([[5, 90, 5, 17], [127, 3, 90, 0]])
    renumbered = lazy.load_embeddings(ids)  # the rows of these tokens only
    assert lazy.model.model.embed_tokens.weight.shape[0] == 6 and lazy.model.lm_head.weight.is_meta
    assert torch.equal(lazy.model.model.embed_tokens(renumbered), reference.model.embed_tokens(ids))
    lazy.unload_outside()
    assert lazy.model.model.embed_tokens.weight.shape == reference.model.embed_tokens.weight.shape
    head = torch.cat([rows for _, rows in lazy.read_rows(lazy.head_name, rows=50)])
    assert torch.equal(head, reference.lm_head.weight)
    lazy.load_block(1)
    assert torch.equal(blocks[1].mlp.up_proj.weight, reference.model.layers[1].mlp.up_proj.weight)
    assert all(p.is_meta for p in blocks[0].parameters())
    lazy.unload_block(1)
    assert all(p.is_meta for p in blocks[1].parameters())


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(tiny_folder, tmp_path):
    folder, _ = tiny_folder
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 96
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match="of another shape, e.g. model.layers.0.mlp"):
        open_lazy(folder, torch.float32, torch.device("cpu"), str(folder))


def _protocol(text):
    return Protocol(seqlen=32, calib=str(text), calib_windows=6, eval=str(eval_text_beside(text)), eval_windows=4)


def _weights(folder) -> dict:
    code = ("import sys, torch, netslim; m = netslim.load(sys.argv[1]).model; "
            "torch.save({k: v for k, v in m.state_dict().items()}, sys.argv[2])")
    target = folder.parent / f"{folder.name}.pt"
    subprocess.run([sys.executable, "-c", code, str(folder), str(target)], check=True, capture_output=True)
    return torch.load(target, weights_only=True)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_offload_gives_the_weights_and_perplexities_of_the_job_in_memory(recipe, tiny_folder, tmp_path):
    folder, text = tiny_folder
    reports, weights = {}, {}
    for offload in (False, True):
        out = tmp_path / f"offload-{offload}"
        compress_job(str(folder), RECIPES[recipe], out, _protocol(text), progress=False, storage_format="packed",
                     execution=Execution(offload=offload, batch_size=2))
        reports[offload] = json.loads((out / "report.json").read_text())
        weights[offload] = _weights(out)  # reloaded in a new process, as a user would
    assert reports[True]["protocol"]["execution"]["offload"] is True
    assert weights[True].keys() == weights[False].keys()
    for name, tensor in weights[False].items():
        torch.testing.assert_close(weights[True][name], tensor, rtol=0, atol=0, msg=name)
    for side in ("baseline", "compressed"):
        for key in ("ppl", "params", "nonzero_params"):
            assert reports[True][side][key] == pytest.approx(reports[False][side][key], rel=1e-5), (side, key)
    # the same stored bytes, split into more files (each with its own header)
    assert reports[True]["storage"]["tensor_bytes"] == reports[False]["storage"]["tensor_bytes"]
    assert 0 <= reports[True]["compressed"]["size_bytes"] - reports[False]["compressed"]["size_bytes"] < 4096
    shards = sorted(p.name for p in (tmp_path / "offload-True").glob("*.safetensors"))
    assert shards == ["netslim-00001.safetensors", "netslim-00002.safetensors", "netslim-rest.safetensors"]
    assert (tmp_path / "offload-True" / "tokenizer.json").is_file()


def test_offload_in_bf16_reloads_as_written(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "o"
    result = compress_job(str(folder), RECIPES["gptq"], out, _protocol(text), progress=False,
                          execution=Execution(offload=True, dtype="bfloat16"))
    loaded = _weights(out)
    assert loaded["model.layers.0.self_attn.q_proj.codes"].dtype == torch.uint8
    assert result.report.compressed.ppl == pytest.approx(result.report.baseline.ppl, rel=0.1)
    assert result.report.protocol["execution"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("recipe, overrides, message", [
    ([{"method": "width", "ratio": 0.3}], {}, "'width' needs the whole model in memory"),
    ([{"method": "gptq", "bits": 4}, {"method": "recover"}], {}, "recover fine-tunes the whole model"),
    ([{"method": "wanda", "ratio": 0.5}], {"storage_format": "dense"}, "use --format auto or packed"),
    ([{"method": "wanda", "ratio": 0.5}], {"out": None}, "give an output folder"),
])
def test_what_offload_cannot_run_is_refused_before_work(recipe, overrides, message, tiny_folder, tmp_path):
    folder, text = tiny_folder
    kwargs = {"out": tmp_path / "o", "storage_format": "auto", **overrides}
    with pytest.raises(ConfigError, match=message):
        compress_job(str(folder), recipe, kwargs["out"], _protocol(text), progress=False,
                     storage_format=kwargs["storage_format"], execution=Execution(offload=True))
    assert not (tmp_path / "o").exists()


def test_offload_refuses_a_netslim_output_and_a_hub_id(tiny_folder, tmp_path):
    folder, text = tiny_folder
    out = tmp_path / "q"
    compress_job(str(folder), RECIPES["rtn"], out, _protocol(text), progress=False)
    with pytest.raises(ConfigError, match="is a netslim output; compress it without --offload"):
        compress_job(str(out), RECIPES["rtn"], tmp_path / "o2", _protocol(text), progress=False,
                     execution=Execution(offload=True))
    with pytest.raises(ConfigError, match="reads a local checkpoint"):
        compress_job("someone/some-model", RECIPES["rtn"], tmp_path / "o3", _protocol(text), progress=False,
                     execution=Execution(offload=True))


def test_offload_is_chosen_when_the_checkpoint_would_not_fit(tiny_folder, tmp_path, monkeypatch):
    import netslim.job as job

    folder, text = tiny_folder
    monkeypatch.setattr(job, "available_memory_bytes", lambda: 1000)  # the tiny model is ~100 kB
    result = compress_job(str(folder), RECIPES["rtn"], tmp_path / "o", _protocol(text), progress=False,
                          execution=Execution(offload=None))
    assert result.report.protocol["execution"]["offload"] is True
    # a recipe that cannot stream runs in memory instead
    result = compress_job(str(folder), [{"method": "width", "ratio": 0.3}], tmp_path / "w", _protocol(text),
                          progress=False, execution=Execution(offload=None))
    assert result.report.protocol["execution"]["offload"] is False


@pytest.mark.parametrize("family", ["gemma3_text", "opt"])
def test_offload_matches_memory_on_families_with_computed_buffers(family, tiny_folder, tmp_path):
    """Gemma 3 scales its embeddings by a buffer the config computes; OPT has learned positions."""
    from tiny_models import char_tokenizer

    _, text = tiny_folder
    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    ppl = {}
    for offload in (False, True):
        result = compress_job(str(folder), RECIPES["rtn"], tmp_path / f"o-{offload}", _protocol(text),
                              progress=False, storage_format="packed", execution=Execution(offload=offload))
        ppl[offload] = (result.report.baseline.ppl, result.report.compressed.ppl)
    assert ppl[True] == pytest.approx(ppl[False], rel=1e-4)  # the same up to float summation order


def test_a_sparse_embedding_is_stored_as_in_memory(tmp_path):
    """The vocabulary matrices are streamed into the folder only when dense; a sparse one is
    read whole and takes the codec netslim.save would give it."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.embed_tokens.weight[::2] = 0  # half the rows
    folder = tmp_path / "sparse-embedding"
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(400)))
    records, weights = {}, {}
    for offload in (False, True):
        out = tmp_path / f"o-{offload}"
        compress_job(str(folder), RECIPES["rtn"], out, _protocol(text), progress=False, storage_format="packed",
                     execution=Execution(offload=offload))
        records[offload] = json.loads((out / "netslim.json").read_text())["storage"]["tensors"]
        weights[offload] = _weights(out)
    name = "model.embed_tokens.weight"
    assert records[True][name]["codec"] == records[False][name]["codec"] == "bitmask"
    assert records[True][name]["bytes"] == records[False][name]["bytes"]
    assert torch.equal(weights[True][name], weights[False][name])
