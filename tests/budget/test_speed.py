"""netslim search --budget speedup=...: the structural space, its latency table, and a search
on a small Llama whose blocks dominate its prefill."""

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
import transformers as T
from safetensors.torch import load_file
from typer.testing import CliRunner

import netslim
import netslim.budget.run as run
import netslim.budget.speed as speed
from netslim.budget.budgets import parse_budget
from netslim.budget.structure import (
    DROP, Cut, LatencyTable, Structure, StructureProxies, cut_copy, measure_probes, neuron_options, swapped,
)
from netslim.cli import app
from netslim.engine.sweep import iter_block_stats
from netslim.job import Protocol, compress_job
from netslim.models.adapter import ModelAdapter
from netslim.recovery.teacher import window_losses
from tiny_models import char_tokenizer, eval_text_beside, random_windows, tiny_model


@pytest.fixture
def wide_folder(tmp_path, monkeypatch):
    """A Llama of 4 blocks wide enough (256 / 1024) that its blocks are most of a prefill."""
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))
    tokenizer = char_tokenizer()
    config = T.LlamaConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                           num_key_value_heads=4, vocab_size=128, max_position_embeddings=256,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    folder = tmp_path / "wide-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(400)))
    protocol = Protocol(seqlen=128, calib=str(text), calib_windows=4, eval=str(eval_text_beside(text)), eval_windows=2)
    return str(folder), protocol, tmp_path


def test_neuron_options_step_by_eighths_and_keep_a_quarter():
    assert neuron_options(1536) == [0, 192, 384, 576, 768, 960, 1152]
    assert neuron_options(128) == [0, 16, 32, 48, 64, 80, 96]
    assert all((2048 - n) % 64 == 0 for n in neuron_options(2048))


def _structure(adapter):
    windows = random_windows(4, 32)
    return Structure.measure(adapter, lambda needs, **kw: iter_block_stats(adapter, windows, needs, **kw))


def test_cut_energy_grows_with_the_cut_and_the_recipe_spells_the_choice():
    adapter = ModelAdapter.from_model(tiny_model("llama"))
    structure = _structure(adapter)
    assert {c.label for c in structure.cuts} >= {"u0 n0", "u1 n0", "u0 n16"}
    assert DROP in structure.labels()
    assert structure.energy(0, Cut(0, 0)) == 0.0
    energies = [structure.energy(0, Cut(0, n)) for n in neuron_options(128)]
    assert energies == sorted(energies) and energies[-1] > 0
    both = structure.energy(0, Cut(1, 0)) + structure.energy(0, Cut(0, 32))
    assert structure.energy(0, Cut(1, 32)) == pytest.approx(both)
    names = structure.names
    recipe = structure.recipe({names[0]: "u1 n32", names[1]: DROP})
    assert recipe[0] == {"method": "depth", "remove": [1]}
    assert recipe[1] == {"method": "width", "score": "flap", "refit": True, "block_units": [1], "block_neurons": [32]}
    assert recipe[-1]["method"] == "rtn"


def test_a_cut_copy_leaves_the_model_alone():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapter = ModelAdapter.from_model(model)
    structure = _structure(adapter)
    block = cut_copy(adapter, structure, 0, Cut(1, 64))
    assert block.mlp.down_proj.in_features == 64 and block.self_attn.o_proj.in_features == 32
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_candidate_is_cut_and_refitted_from_the_dense_statistics_alone():
    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    windows = random_windows(4, 32)
    structure = Structure.measure(adapter, lambda needs, **kw: iter_block_stats(adapter, windows, needs, **kw))
    first, second = structure.names
    before = {k: v.clone() for k, v in model.state_dict().items()}
    built = {}
    for later in (DROP, "u0 n16"):
        choice = {first: "u1 n32", second: later}
        candidate, replayed = copy.deepcopy(model), copy.deepcopy(model)
        rest = structure.build(ModelAdapter.from_model(candidate), choice)
        assert [stage["method"] for stage in rest] == (["depth", "rtn"] if later == DROP else ["rtn"])
        if rest[:-1]:  # the blocks to remove (the stored grid left out on both sides)
            netslim.compress(candidate, rest[:-1], windows, progress=False)
        # the final compression: the recipe, which refits each block on the cut model's states
        netslim.compress(replayed, structure.recipe(choice)[:-1], windows, progress=False)
        assert {k: v.shape for k, v in candidate.state_dict().items()} == {k: v.shape for k, v in replayed.state_dict().items()}
        built[later] = candidate, replayed
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    candidate, replayed = built[DROP]
    assert len(candidate.model.layers) == 1
    # block 0 sees the same states in both, so the dense statistics give it the recipe's refit
    for path in ("self_attn.o_proj", "mlp.down_proj"):
        a, b = candidate.model.layers[0].get_submodule(path), replayed.model.layers[0].get_submodule(path)
        assert torch.allclose(a.weight, b.weight, atol=1e-5) and torch.allclose(a.bias, b.bias, atol=1e-5), path
    # block 1 is refitted on the dense states here, on those of the cut block 0 by the recipe
    candidate, replayed = built["u0 n16"]
    a, b = candidate.model.layers[1].mlp.down_proj, replayed.model.layers[1].mlp.down_proj
    assert a.weight.shape == b.weight.shape and not torch.allclose(a.weight, b.weight, atol=1e-5)


def test_block_probes_are_the_whole_model_loss_rises():
    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    structure = _structure(adapter)
    probe = random_windows(3, 16).ids
    proxies = measure_probes(adapter, structure, probe, progress=False)
    with torch.no_grad():
        dense = window_losses(model, probe, progress=False).mean().item()
        for index, block in enumerate(adapter.blocks):
            with swapped(adapter, index, cut_copy(adapter, structure, index, structure.probe_cut())):
                rise = window_losses(model, probe, progress=False).mean().item() - dense
            assert proxies.probe_rise[index] == pytest.approx(rise, abs=1e-5)
            block.forward = lambda *args, **kwargs: args[0] if args else kwargs["hidden_states"]  # skipped
            try:
                rise = window_losses(model, probe, progress=False).mean().item() - dense
            finally:
                del block.forward
            assert proxies.drop_rise[index] == pytest.approx(rise, abs=1e-5) and rise != 0


def test_uniform_baselines_one_per_head_count_and_the_near_uniform_candidate_around_the_best():
    adapter = ModelAdapter.from_model(tiny_model("llama"))
    structure = _structure(adapter)
    names, blocks = structure.names, len(structure.names)
    seconds = {c.label: 1.0 - 0.1 * c.units - c.neurons / 256 for c in structure.cuts} | {DROP: 0.0}
    table = LatencyTable(seconds, fixed=0.5, dense=0.5 + blocks, threads=1, tokens=16)
    uniform = lambda cut: table.fixed + blocks * seconds[cut.label]  # noqa: E731
    energy = lambda cut: sum(structure.energy(i, cut) for i in range(blocks))  # noqa: E731
    goal = table.fixed + blocks * 0.7
    cuts = speed._uniform_cuts(structure, table, goal)
    # every head count that has a fast enough cut, each with the fewest neurons that is
    assert [c.units for c in cuts] == sorted({c.units for c in structure.cuts if uniform(c) <= goal})
    for cut in cuts:
        assert uniform(cut) <= goal
        assert all(uniform(c) > goal for c in structure.cuts if c.units == cut.units and c.neurons < cut.neurons)
    labels = [label for label, _ in speed._baselines(structure, StructureProxies({}, dict.fromkeys(range(blocks), 0.0),
                                                                                 {}), table, goal)]
    assert labels[:len(cuts)] == [f"width {c.label} (uniform)" for c in cuts] and labels[-1].startswith("depth")
    # the best measured uniform cut among those fast enough
    target = parse_budget("speedup=1.1x")
    point = lambda cut, nll, speedup: {"_choice": {n: cut.label for n in names}, "nll": nll,  # noqa: E731
                                       "latency_s": 1.0, "speedup": speedup}
    heavy = cuts[-1]
    mixed = {**{n: heavy.label for n in names}, names[0]: cuts[0].label}
    measured = [point(cuts[0], 1.0, 1.05), point(heavy, 2.0, 1.2), {**point(heavy, 0.5, 1.3), "_choice": mixed}]
    # the lowest loss among the uniform cuts that meet the budget: not the faster mixed choice, not the slow one
    assert len(cuts) > 1 and speed._best_uniform(target, measured) == heavy
    assert speed._best_uniform(target, measured[:1]) is None
    light = speed._lighter_cut(structure, table, goal, heavy)
    assert uniform(light) > goal and energy(light) < energy(heavy)
    assert all(uniform(c) >= uniform(light) for c in structure.cuts if uniform(c) > goal and energy(c) < energy(heavy))
    # a goal that leaves room for about half the blocks to take a lighter cut
    goal = table.fixed + blocks * (0.45 * seconds[heavy.label] + 0.55 * seconds[light.label])
    light = speed._lighter_cut(structure, table, goal, heavy)
    assert uniform(heavy) <= goal < uniform(light) and energy(light) < energy(heavy)
    # removing blocks costs nothing here, so the free candidates drop them and the mixed one differs
    sensitive = StructureProxies({i: 10.0 if i == 0 else 1.0 for i in range(blocks)}, dict.fromkeys(range(blocks), 0.0),
                                 dict.fromkeys(range(blocks), 1.0))
    measure = lambda choice, kind, label: {"label": label, "speedup": 2.0, "speedup_predicted": 2.0,  # noqa: E731
                                           "_choice": choice}
    points = speed._candidates(structure, sensitive, table, target, goal * speed.AIM, heavy, measure, None)
    mixed = [p["_choice"] for p in points if p["label"] == f"allocation, {heavy.label} or {light.label}"]
    assert len(mixed) == 1 and table.predict(mixed[0]) <= goal + 1e-9
    assert sorted(set(mixed[0].values())) == sorted({heavy.label, light.label})
    assert mixed[0][names[0]] == light.label  # the most sensitive block keeps more


def test_speed_budget_from_the_command_line_and_resume(wide_folder, monkeypatch):
    folder, protocol, tmp_path = wide_folder
    out = tmp_path / "fast"
    result = CliRunner().invoke(app, ["search", folder, "--budget", "speedup=1.1x", "--out", str(out),
                                      "--calib", protocol.calib, "--calib-windows", "4", "--seqlen", "128",
                                      "--eval", protocol.eval, "--eval-windows", "2"])
    assert result.exit_code == 0, result.output
    pareto = json.loads((out / "pareto.json").read_text())
    chosen, final = pareto["chosen"], pareto["final"]
    assert chosen["speedup"] >= 1.1  # measured beside the dense model
    assert all(p["speedup"] < 1.1 or p["nll"] >= chosen["nll"] for p in pareto["points"])
    assert {"u0 n0", DROP} <= set(pareto["latency_table"]["blocks"])
    assert (out / "pareto.png").stat().st_size > 0 and "speed-up" in (out / "report.md").read_text()
    # the folder holds the chosen recipe, replayed by the final compression
    recipe = json.loads((out / "model" / "report.json").read_text())["recipe"]
    assert [s["method"] for s in recipe] == [s["method"] for s in chosen["recipe"]]
    assert final["bytes_on_disk"] == chosen["bytes"]
    assert math.isfinite(final["ppl"]) and "speedup_met" in final
    script = ("import json, sys, torch, netslim; m = netslim.load(sys.argv[1]).model; "
              "print(json.dumps([m.config.num_hidden_layers, m(torch.arange(1, 9)[None]).logits.shape[-1]]))")
    reloaded = subprocess.run([sys.executable, "-c", script, str(out / "model")], capture_output=True, text=True,
                              check=True)
    layers, vocab = json.loads(reloaded.stdout.splitlines()[-1])
    assert layers == 4 - sum(1 for s in recipe if s["method"] == "depth" for _ in s["remove"]) and vocab == 128
    # ... and is the model its recipe replays to: the same tensors and perplexity as compress_job's
    compress_job(folder, chosen["recipe"], tmp_path / "replayed", protocol, progress=False)
    written, replayed = _tensors(out / "model"), _tensors(tmp_path / "replayed")
    assert written and written.keys() == replayed.keys() and all(torch.equal(written[k], replayed[k]) for k in written)
    assert json.loads((tmp_path / "replayed" / "report.json").read_text())["compressed"]["ppl"] == final["ppl"]

    def never(*args, **kwargs):
        raise AssertionError("resumed work was done again")

    for name in ("_measured", "latency_table", "measure_probes"):
        monkeypatch.setattr(speed, name, never)
    again = run.search(folder, "speedup=1.1x", tmp_path / "again", protocol, progress=False)
    assert again.chosen == {k: v for k, v in chosen.items()}


def _tensors(folder) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_a_mixture_of_experts_is_refused_before_work(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))
    from tiny_models import TINY_MOE_CONFIGS  # noqa: PLC0415

    config = TINY_MOE_CONFIGS["mixtral"]()
    model = T.AutoModelForCausalLM.from_config(config)
    folder = tmp_path / "moe"
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    _, text = tiny_folder
    protocol = Protocol(seqlen=32, calib=str(text), calib_windows=4, eval=str(eval_text_beside(text)), eval_windows=2)
    monkeypatch.setattr(speed.Structure, "measure", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(run.NetslimError, match="mixture of experts"):
        run.search(str(folder), "speedup=1.5x", tmp_path / "x", protocol, progress=False)
