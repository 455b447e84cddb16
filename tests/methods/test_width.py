"""Width pruning: equivalence with masking, compensation, GQA invariants, export round trip."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

import netslim
from tiny_models import logits_in_a_new_process, tiny_model
from netslim.errors import ConfigError, UnsupportedModelError
from netslim.export.load import read_marker
from netslim.recipe import dump_recipe, load_recipe
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter

IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(2))


def _kept_columns(dense: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Which columns of ``dense`` survive in ``pruned`` (columns are unique in random weights)."""
    return (dense.t()[:, None, :] == pruned.t()[None]).all(-1).any(1)


def _masked_reference(dense, pruned, layers):
    """``dense`` with the heads and neurons that ``pruned`` lost set to output zero."""
    masked = copy.deepcopy(dense)
    a, p = ModelAdapter.from_model(masked), ModelAdapter.from_model(pruned)
    records = {r["name"]: r for r in layers}
    for i in range(a.num_blocks):
        removed = records[f"{a.block_name(i)}.{a.spec.attn_out}"]["removed_heads"]
        a.block_part(i, a.spec.attn_out).weight.data[:, surgery.head_rows(torch.tensor(removed, dtype=torch.long), a.head_dim)] = 0
        down, down_p = a.block_part(i, a.spec.mlp_out).weight.data, p.block_part(i, p.spec.mlp_out).weight.data
        down[:, ~_kept_columns(down, down_p)] = 0
    return masked


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma3_text", "opt"])
@pytest.mark.parametrize("score,allocation,gqa", [("flap", "global", "kv"), ("wanda", "uniform", "query"), ("magnitude", "global", "query")])
def test_width_equals_dense_with_removed_structures_masked(family, score, allocation, gqa, token_windows):
    dense = tiny_model(family)
    model = copy.deepcopy(dense)
    cfg = netslim.WidthConfig(ratio=0.4, score=score, allocation=allocation, gqa=gqa, compensate=False)
    result = netslim.compress(model, cfg, calibration=token_windows, progress=False)
    assert netslim.evaluate(model, data=token_windows, progress=False).size.params < 0.9 * sum(p.numel() for p in dense.parameters())
    reference = _masked_reference(dense, model, result.layers)
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, atol=1e-4, rtol=1e-4)


def _block0_error(dense, model, windows):
    """Mean squared error of block 0's output against the dense block 0, on the same inputs."""
    outs = []
    for m in (dense, model):
        captured = []
        handle = ModelAdapter.from_model(m).blocks[0].register_forward_hook(lambda _m, _i, o: captured.append(o[0] if isinstance(o, tuple) else o))
        with torch.no_grad():
            m(windows.ids)
        handle.remove()
        outs.append(captured[0])
    return float((outs[0] - outs[1]).square().mean())


def _projection_params(model) -> int:
    adapter = ModelAdapter.from_model(model)
    return sum(m.weight.numel() for i in range(adapter.num_blocks) for m in adapter.block_linears(i).values())


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("gqa,prune_attention", [("kv", True), ("query", True), ("kv", False)])
def test_ratio_is_the_fraction_of_all_projection_parameters_removed(allocation, gqa, prune_attention, token_windows):
    dense = _projection_params(tiny_model("llama"))
    for ratio in (0.3, 0.5):
        model = tiny_model("llama")
        cfg = netslim.WidthConfig(ratio=ratio, score="wanda", allocation=allocation, gqa=gqa, prune_attention=prune_attention)
        netslim.compress(model, cfg, calibration=token_windows, progress=False)
        removed = 1 - _projection_params(model) / dense
        # uniform: within a neuron per block; global: at most one extra unit (a whole KV group here)
        assert ratio - 0.01 <= removed <= ratio + (0.01 if allocation == "uniform" else 0.17), (ratio, removed)


def test_compensation_lowers_layer_error(token_windows):
    dense = tiny_model("llama")
    with torch.no_grad():  # channels with a large mean, which the bias can replace
        for block in ModelAdapter.from_model(dense).blocks:
            block.mlp.gate_proj.bias = torch.nn.Parameter(torch.full((128,), 2.0))
    errors = {}
    for compensate in (False, True):
        model = copy.deepcopy(dense)
        netslim.compress(model, netslim.WidthConfig(ratio=0.4, score="flap", compensate=compensate), calibration=token_windows, progress=False)
        errors[compensate] = _block0_error(dense, model, token_windows)
        assert (ModelAdapter.from_model(model).blocks[0].mlp.down_proj.bias is not None) == compensate
    assert errors[True] < errors[False], errors


def test_refit_lowers_layer_error_below_compensation_and_reloads(tmp_path, token_windows):
    dense = tiny_model("llama")
    with torch.no_grad():  # correlated MLP neurons with a large mean: what a refit can use and a bias cannot
        for block in ModelAdapter.from_model(dense).blocks:
            gate = block.mlp.gate_proj.weight
            gate[64:] = gate[:64] + 0.1 * gate[64:]
            block.mlp.gate_proj.bias = torch.nn.Parameter(torch.full((128,), 2.0))
    errors, results = {}, {}
    for refit in (False, True):
        model = copy.deepcopy(dense)
        results[refit] = netslim.compress(model, netslim.WidthConfig(ratio=0.4, score="flap", refit=refit),
                                          calibration=token_windows, progress=False)
        errors[refit] = _block0_error(dense, model, token_windows)
    assert errors[True] < 0.8 * errors[False], errors
    netslim.save(results[True], tmp_path / "out")
    logits = logits_in_a_new_process([tmp_path / "out"], IDS, tmp_path)
    torch.testing.assert_close(logits[str(tmp_path / "out")], results[True].model(IDS).logits)


@pytest.mark.parametrize("gqa", ["kv", "query"])
def test_gqa_invariants_and_generation(gqa, token_windows):
    model = tiny_model("llama")  # 4 query heads in 2 groups of 2
    netslim.compress(model, netslim.WidthConfig(ratio=0.5, score="flap", allocation="global", gqa=gqa), calibration=token_windows, progress=False)
    adapter = ModelAdapter.from_model(model)
    for i in range(adapter.num_blocks):
        q, kv = surgery.head_counts(adapter, i)
        attn = adapter.block_part(i, "self_attn")
        assert q % kv == 0 and attn.num_key_value_groups == q // kv
        assert (q // kv == 2) if gqa == "kv" else (kv == 2)
    out = model.generate(IDS[:1, :4], max_new_tokens=6, do_sample=False)
    assert out.shape == (1, 10)


def test_taylor_score_runs_and_restores_grad_flags(token_windows):
    model = tiny_model("qwen2")
    netslim.compress(model, netslim.WidthConfig(ratio=0.3, score="taylor", taylor_windows=2), calibration=token_windows, progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert surgery.intermediate_size(ModelAdapter.from_model(model), 0) < 128


def test_uniform_result_loads_with_plain_transformers(tmp_path, token_windows):
    model = tiny_model("llama")
    result = netslim.compress(model, netslim.WidthConfig(ratio=0.5, score="wanda"), calibration=token_windows, progress=False)
    netslim.save(result, tmp_path / "out")
    assert read_marker(tmp_path / "out")["format"] == "dense"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert plain.config.num_key_value_heads == 1 and plain.config.intermediate_size == model.config.intermediate_size
    torch.testing.assert_close(plain(IDS).logits, model(IDS).logits)


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_nonuniform_or_compensated_result_round_trips_through_netslim_load(tmp_path, token_windows, allocation):
    model = tiny_model("mistral")
    cfg = netslim.WidthConfig(ratio=0.4, score="flap", allocation=allocation, gqa="query")
    result = netslim.compress(model, cfg, calibration=token_windows, progress=False)
    netslim.save(result, tmp_path / "out")
    assert read_marker(tmp_path / "out")["format"] == "packed"  # o_proj/down_proj biases: netslim.load only
    loaded = netslim.load(tmp_path / "out").model
    torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits)
    assert loaded.generate(IDS[:1, :4], max_new_tokens=3, do_sample=False).shape == (1, 7)


def test_opt_uniform_result_needs_netslim_load_and_round_trips(tmp_path, token_windows):
    model = tiny_model("opt")  # OPT's config ties head_dim to hidden_size / heads: it cannot say "fewer heads"
    result = netslim.compress(model, netslim.WidthConfig(ratio=0.4, score="wanda"), calibration=token_windows, progress=False)
    netslim.save(result, tmp_path / "out")
    assert read_marker(tmp_path / "out")["format"] == "packed"
    loaded = netslim.load(tmp_path / "out").model
    torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits)


def test_a_head_count_the_config_class_refuses_keeps_the_config_and_reloads(tmp_path, token_windows):
    """Llama's config wants hidden_size to be a multiple of the head count (head_dim given or
    not): 8 heads of 32 in 4 groups, one group removed, leaves 6, which 256 is not a multiple of."""
    from transformers import LlamaConfig  # noqa: PLC0415

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(LlamaConfig(
        hidden_size=256, intermediate_size=256, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
        vocab_size=128, max_position_embeddings=64)).eval()
    result = netslim.compress(model, netslim.WidthConfig(block_units=(1, 1), block_neurons=(64, 64), score="wanda"),
                              calibration=token_windows, progress=False)
    adapter = ModelAdapter.from_model(model)
    assert all(surgery.head_counts(adapter, i) == (6, 3) for i in range(2))
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (8, 256)  # as it was
    netslim.save(result, tmp_path / "out")
    logits = logits_in_a_new_process([tmp_path / "out"], IDS, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits[str(tmp_path / "out")], model(IDS).logits)


def test_bad_settings_and_families_fail_clearly(token_windows):
    with pytest.raises(ConfigError):
        netslim.compress(tiny_model("llama"), {"method": "width", "ratio": 1.5}, calibration=token_windows)
    with pytest.raises(ConfigError):
        netslim.compress(tiny_model("llama"), {"method": "width", "scores": "flap"}, calibration=token_windows)
    with pytest.raises(ConfigError, match="ignore"):
        netslim.compress(tiny_model("llama"), {"method": "width", "ignore": ["model.layers.0.*"]}, calibration=token_windows)
    with pytest.raises(ConfigError, match="calibration"):
        netslim.compress(tiny_model("llama"), {"method": "width", "score": "flap"}, calibration=None, tokenizer=None, progress=False)
    with pytest.raises(UnsupportedModelError):
        netslim.compress(tiny_model("gpt2"), {"method": "width"}, calibration=token_windows, progress=False)


def test_width_and_depth_recipes_round_trip_through_yaml(tmp_path):
    stages = netslim.parse_recipe([
        {"method": "width", "ratio": 0.3, "score": "taylor", "gqa": "query", "allocation": "global", "compensate": True},
        {"method": "depth", "ratio": 0.5, "score": "perplexity", "score_windows": 4},
    ])
    path = tmp_path / "r.yaml"
    path.write_text(dump_recipe(stages))
    assert load_recipe(path) == stages
    assert stages[0].compensates and not netslim.WidthConfig(score="wanda").compensates


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_neuron_multiple_keeps_every_mlp_width_a_multiple(allocation, token_windows):
    model = tiny_model("llama")
    result = netslim.compress(model, netslim.WidthConfig(ratio=0.3, allocation=allocation, neuron_multiple=32),
                              calibration=token_windows, progress=False)
    adapter = ModelAdapter.from_model(model)
    widths = [surgery.intermediate_size(adapter, i) for i in range(adapter.num_blocks)]
    assert all(w % 32 == 0 and 0 < w <= 128 for w in widths), widths
    plain = netslim.compress(tiny_model("llama"), netslim.WidthConfig(ratio=0.3, allocation=allocation),
                             calibration=token_windows, progress=False)
    unrounded = [128 - n for n in plain.recipe[0].block_neurons]
    assert all(abs(w - u) <= 16 for w, u in zip(widths, unrounded))  # the nearest multiple
    assert [128 - n for n in result.recipe[0].block_neurons] == widths  # the recipe replays the rounded widths
