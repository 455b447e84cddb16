"""Every module kind in every storage format: loads in a fresh process, and plain
``transformers`` either refuses the folder or computes the same logits."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers as T

import netslim
from netslim.errors import ConfigError, NetslimError
from netslim.export.save import round_for_storage
from netslim.export.load import read_marker
from netslim.export.modules import KIND_MODULES, register_module_kind
from tiny_models import logits_in_a_new_process, tiny_model

IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(7))
CALIB = torch.randint(3, 128, (4, 32), generator=torch.Generator().manual_seed(0))
QUANT = {"bits": 4, "group_size": 16}
# name -> (recipe, whether plain transformers can express it, i.e. format "dense" is allowed)
KINDS = {
    "gptq": ({"method": "gptq", **QUANT}, True),
    "rtn": ({"method": "rtn", **QUANT}, True),
    "sparsegpt_bits": ({"method": "sparsegpt", "ratio": 0.5, **QUANT}, True),
    "svd_llm": ({"method": "svd_llm", "ratio": 0.4}, False),
    "gptq_eora": ([{"method": "gptq", **QUANT}, {"method": "eora", "rank": 4}], False),
    "slicegpt": ({"method": "slicegpt", "ratio": 0.25}, False),
    "flap": ({"method": "width", "ratio": 0.4, "score": "flap", "gqa": "query"}, False),
    "mixtral_gptq": ({"method": "gptq", **QUANT}, True),  # routed experts, fused again in the dense layout
}
FAMILY = {"mixtral_gptq": "mixtral"}  # the others compress the tiny Llama
FORMATS = ("auto", "dense", "packed")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _kinds(specs: dict) -> set[str]:
    """Every kind in saved module specs, nested ones (a compensated base, sliced children) too."""
    found = set()
    for spec in specs.values():
        found.add(spec["kind"])
        found |= _kinds({"base": spec["base"]} if "base" in spec else spec.get("children", {}))
    return found


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """name -> (folder, in-memory logits) for every kind and allowed format."""
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for kind, (recipe, plain) in KINDS.items():
        model = tiny_model(FAMILY.get(kind, "llama"))
        result = netslim.compress(model, recipe, CALIB, progress=False)
        round_for_storage(model)  # the default value dtype, applied in memory as the job does
        expected = _logits(model)
        for fmt in FORMATS:
            if fmt == "dense" and not plain:
                continue
            netslim.save(result, root / f"{kind}-{fmt}", format=fmt)
            out[f"{kind}-{fmt}"] = (root / f"{kind}-{fmt}", expected)
    return out


def test_the_cases_cover_every_module_kind(artifacts):
    saved = set().union(*(_kinds(read_marker(folder)["modules"]) for folder, _ in artifacts.values()))
    assert set(KIND_MODULES) <= saved
    assert {"linear"} <= saved  # FLAP's biases on a bias-free config


def test_every_kind_and_format_loads_in_a_new_process(artifacts, tmp_path):
    got = logits_in_a_new_process([folder for folder, _ in artifacts.values()], IDS, tmp_path)
    for name, (folder, expected) in artifacts.items():
        assert torch.equal(got[str(folder)], expected), name


def test_every_kind_loads_in_bfloat16(artifacts):
    for name, (folder, expected) in artifacts.items():
        model = netslim.load(folder, dtype=torch.bfloat16).model
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}, name
        logits = _logits(model)
        assert logits.dtype == torch.bfloat16, name
        assert (logits.float() - expected).abs().max() < 0.05 * expected.abs().max(), name


def test_plain_transformers_refuses_or_computes_the_same_logits(artifacts):
    for name, (folder, expected) in artifacts.items():
        fmt = read_marker(folder)["format"]
        if fmt == "packed":
            assert not (folder / "model.safetensors").exists(), name
            with pytest.raises(OSError):
                T.AutoModelForCausalLM.from_pretrained(folder)
        else:
            assert fmt == "dense" and name.endswith("-dense"), name
            logits = _logits(T.AutoModelForCausalLM.from_pretrained(folder))
            if name.startswith("mixtral"):  # transformers' fused experts: one gate/up matmul, other rounding
                assert torch.allclose(logits, expected, atol=1e-5, rtol=0), name
            else:
                assert torch.equal(logits, expected), name


@pytest.mark.parametrize("kind", [k for k, (_, plain) in KINDS.items() if not plain])
def test_dense_format_refuses_what_plain_transformers_cannot_express(kind, tmp_path):
    model = tiny_model("llama")
    result = netslim.compress(model, KINDS[kind][0], CALIB, progress=False)
    with pytest.raises(ConfigError, match="use format auto or packed") as error:
        netslim.save(result, tmp_path / "out", format="dense")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("module", sorted(set(KIND_MODULES.values())))
def test_each_defining_module_imports_first_without_a_cycle(module):
    run = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]


def test_registering_a_kind_missing_from_the_table_fails():
    with pytest.raises(NetslimError, match="KIND_MODULES"):
        register_module_kind("not_in_the_table")(type("Odd", (torch.nn.Module,), {}))
