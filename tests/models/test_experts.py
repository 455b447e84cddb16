"""Mixtures of experts (Mixtral, Qwen2-MoE, Qwen3-MoE): every routed expert is a layer of its own,
calibrated on the tokens routed to it, compressed by every layer method, recorded, stored and
reloaded; an expert no token reaches is compressed from its weights alone and named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netslim
from netslim.cli import app
from netslim.errors import ConfigError, NetslimError
from netslim.export.save import round_for_storage
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.models.experts import RoutedExperts
from netslim.models.lazy import open_lazy
from tiny_models import TINY_MOE_CONFIGS, char_tokenizer, eval_text_beside, logits_in_a_new_process, tiny_model

FAMILIES = sorted(TINY_MOE_CONFIGS)
CALIB = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(3, 128, (2, 16), generator=torch.Generator().manual_seed(1))
QUANT = {"bits": 4, "group_size": 32}
RECIPES = {
    "wanda": {"method": "wanda", "ratio": 0.5},
    "wanda_owl": {"method": "wanda", "ratio": 0.5, "allocation": "owl"},
    "sparsegpt": {"method": "sparsegpt", "ratio": 0.5},
    "magnitude": {"method": "magnitude", "ratio": 0.5},
    "gptq": {"method": "gptq", **QUANT},
    "rtn": {"method": "rtn", **QUANT},
    "svd_llm": {"method": "svd_llm", "ratio": 0.5},
    "gptq_eora": [{"method": "gptq", **QUANT}, {"method": "eora", "rank": 4}],
}


def _logits(model: nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _expert_names(adapter: ModelAdapter, index: int) -> list[str]:
    return [n for n in adapter.block_linears(index) if ".mlp.experts." in n]


@pytest.mark.parametrize("family", FAMILIES)
def test_unfused_experts_compute_what_transformers_computes(family):
    model = tiny_model(family)
    fused = _logits(model)
    adapter = ModelAdapter.from_model(model)
    assert all(isinstance(block.mlp.experts, RoutedExperts) for block in adapter.blocks)
    assert torch.allclose(_logits(model), fused, atol=1e-5, rtol=0)  # fused gate/up: one matmul, other rounding
    experts = _expert_names(adapter, 0)
    assert len(experts) == 3 * adapter.num_experts == 12
    assert all(isinstance(adapter.model.get_submodule(n), nn.Linear) for n in experts)
    shared = 3 if family == "qwen2_moe" else 0  # the shared expert's gate, up and down
    assert len(adapter.block_linears(0)) == 4 + shared + len(experts)
    ModelAdapter.from_model(model)  # a second adapter leaves the unfused experts alone
    assert torch.equal(adapter.model.get_submodule(experts[0]).weight, linear_weight(model.get_submodule(experts[0])))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("windows", [CALIB, CALIB.reshape(64, 4)], ids=["long", "short"])
def test_each_expert_is_calibrated_on_the_tokens_routed_to_it(family, windows):
    # Short windows leave experts unreached in some forwards and reached in others: a
    # true-sequential stage stops a forward early only once every group of it has its input.
    model = tiny_model(family)
    result = netslim.compress(model, {**RECIPES["wanda"], "true_sequential": True}, windows, progress=False)
    records = {r["name"]: r for r in result.layers}
    adapter = ModelAdapter.from_model(model)
    top_k, tokens = model.config.num_experts_per_tok, windows.numel()
    for index in range(adapter.num_blocks):
        prefix = adapter.block_name(index)
        counts = [records[f"{prefix}.mlp.experts.{e}.gate_proj"]["calibration_tokens"] for e in range(adapter.num_experts)]
        assert sum(counts) == tokens * top_k and len(set(counts)) > 1  # each token to top_k experts, unevenly
        for e, count in enumerate(counts):  # an expert's up and down projections see the same tokens
            assert records[f"{prefix}.mlp.experts.{e}.up_proj"]["calibration_tokens"] == count
            assert records[f"{prefix}.mlp.experts.{e}.down_proj"]["calibration_tokens"] == count
        assert records[f"{prefix}.self_attn.q_proj"]["calibration_tokens"] == tokens
        if family == "qwen2_moe":
            assert records[f"{prefix}.mlp.shared_expert.down_proj"]["calibration_tokens"] == tokens


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_layer_method_compresses_every_expert(family, recipe):
    model = tiny_model(family)
    result = netslim.compress(model, RECIPES[recipe], CALIB, progress=False)
    adapter = ModelAdapter.from_model(model)
    records = {r["name"]: r for r in result.layers}
    methods = [s["method"] for s in (RECIPES[recipe] if isinstance(RECIPES[recipe], list) else [RECIPES[recipe]])]
    for index in range(adapter.num_blocks):
        for name in adapter.block_linears(index):
            assert records[name]["methods"] == methods, name
            if recipe in ("wanda", "sparsegpt", "magnitude"):
                assert records[name]["sparsity"] == pytest.approx(0.5), name
            elif recipe.startswith(("gptq", "rtn")):
                assert getattr(type(adapter.model.get_submodule(name)), "netslim_kind", None) in (
                    "quantized", "lowrank_compensated"), name
    assert torch.isfinite(_logits(model)).all()


def _never_routes_to_last_expert(model: nn.Module) -> None:
    """Router rows v, -v, u, 0 with one expert per token: one of the first two always scores
    above 0, so the last expert is never picked."""
    assert model.config.num_experts_per_tok == 1
    with torch.no_grad():
        for block in model.model.layers:
            router = block.mlp.gate.weight
            router[1] = -router[0]
            router[3] = 0.0


def _mixtral_top1() -> nn.Module:
    import transformers as T

    config = TINY_MOE_CONFIGS["mixtral"]()
    config.num_experts_per_tok = 1
    torch.manual_seed(0)
    model = T.AutoModelForCausalLM.from_config(config).eval()
    _never_routes_to_last_expert(model)
    return model


def test_an_expert_no_token_reaches_is_compressed_from_its_weights_alone():
    model = _mixtral_top1()
    pruned = netslim.compress(model, RECIPES["wanda"], CALIB, progress=False)
    records = {r["name"]: r for r in pruned.layers}
    prefix = "model.layers.0.mlp.experts"
    unreached = [n for n, r in records.items() if r.get("calibration_fallback")]
    assert unreached == [f"model.layers.{b}.mlp.experts.3.{p}" for b in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert records[f"{prefix}.3.gate_proj"]["calibration_tokens"] == 0
    assert records[f"{prefix}.0.gate_proj"]["calibration_tokens"] > 0
    for proj in ("gate_proj", "up_proj", "down_proj"):  # Wanda on white inputs: each row drops its smallest half
        w = model.get_submodule(f"{prefix}.3.{proj}").weight
        kept = w != 0
        assert (kept.sum(1) == w.shape[1] // 2).all()
        smallest_kept = w.abs().masked_fill(~kept, float("inf")).min(1).values
        largest_dropped = _original(f"{prefix}.3.{proj}").abs().masked_fill(kept, -1).max(1).values
        assert (smallest_kept >= largest_dropped).all(), proj
    gptq, rtn = _mixtral_top1(), _mixtral_top1()
    netslim.compress(gptq, RECIPES["gptq"], CALIB, progress=False)
    netslim.compress(rtn, RECIPES["rtn"], CALIB, progress=False)
    for proj in ("gate_proj", "up_proj", "down_proj"):  # GPTQ on white inputs is round-to-nearest
        name = f"{prefix}.3.{proj}"
        assert torch.equal(gptq.get_submodule(name).dequantize(), rtn.get_submodule(name).dequantize()), proj
    name = f"{prefix}.0.gate_proj"  # a reached expert gets GPTQ's error feedback
    assert not torch.equal(gptq.get_submodule(name).dequantize(), rtn.get_submodule(name).dequantize())


def _original(name: str) -> torch.Tensor:
    model = _mixtral_top1()
    ModelAdapter.from_model(model)
    return model.get_submodule(name).weight.detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_experts_reload_in_a_new_process(family, tmp_path):
    folders, expected = [], {}
    for recipe, fmt in (("gptq", "packed"), ("wanda", "dense"), ("svd_llm", "packed")):
        model = tiny_model(family)
        result = netslim.compress(model, RECIPES[recipe], CALIB, progress=False)
        round_for_storage(model, format=fmt)
        folder = tmp_path / f"{recipe}-{fmt}"
        netslim.save(result, folder, format=fmt)
        folders.append(str(folder))
        expected[str(folder)] = _logits(model)
    assert (tmp_path / "wanda-dense" / "model.safetensors").exists()
    got = logits_in_a_new_process(folders, IDS, tmp_path, plain=True)
    for folder in folders:
        assert torch.equal(got[folder], expected[folder]), folder  # netslim.load: the same modules, bit for bit
    dense = str(tmp_path / "wanda-dense")  # plain transformers, experts fused again: same logits up to rounding
    assert torch.allclose(got[dense + ":plain"], expected[dense], atol=1e-5, rtol=0)


@pytest.mark.parametrize("recipe, message", [
    ({"method": "width", "ratio": 0.25}, "width does not resize routed experts"),
    ({"method": "slicegpt", "ratio": 0.25}, "routed experts"),
])
def test_structured_methods_refuse_routed_experts_in_one_line(recipe, message):
    with pytest.raises(NetslimError, match=message) as error:
        netslim.compress(tiny_model("mixtral"), recipe, CALIB, progress=False)
    assert "\n" not in str(error.value)


def test_offload_refuses_a_mixture_of_experts_in_one_line(tmp_path):
    tiny_model("qwen2_moe").save_pretrained(tmp_path / "moe")
    char_tokenizer().save_pretrained(tmp_path / "moe")
    with pytest.raises(ConfigError, match="--offload does not stream mixtures of experts"):
        open_lazy(tmp_path / "moe", torch.float32, torch.device("cpu"), "moe")


def test_the_job_names_unreached_experts_in_its_report(tmp_path):
    folder, text = tmp_path / "top1", tmp_path / "text.txt"
    _mixtral_top1().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    text.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(400)))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [str(a) for a in (
        "compress", folder, "--out", out, "--method", "gptq", "--set", "bits=4", "--set", "group_size=32", "--calib", text,
        "--calib-windows", 4, "--seqlen", 32, "--eval", eval_text_beside(text), "--eval-windows", 3)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    unreached = [r["name"] for r in report["layers"] if r.get("calibration_fallback")]
    assert len(unreached) == 6 and all(".mlp.experts.3." in n for n in unreached)
    markdown = (out / "report.md").read_text()
    assert "## Calibration fallbacks" in markdown and all(f"- {n}" in markdown for n in unreached)
    assert torch.isfinite(torch.tensor(report["compressed"]["ppl"]))


def test_an_interrupted_run_resumes_with_its_experts_restored(tmp_path):
    reference = tiny_model("qwen2_moe")
    netslim.compress(reference, RECIPES["gptq"], CALIB, progress=False)
    netslim.compress(tiny_model("qwen2_moe"), RECIPES["gptq"], CALIB, progress=False, checkpoint_dir=tmp_path)
    shutil.rmtree(next(tmp_path.glob("*/step-1")))  # as if killed in block 1
    fresh = tiny_model("qwen2_moe")
    netslim.compress(fresh, RECIPES["gptq"], CALIB, progress=False, checkpoint_dir=tmp_path)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in reference.modules()]
    expected, got = reference.state_dict(), fresh.state_dict()
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
