"""The search space: per-layer grids in one gptq stage, and stored sizes predicted to the byte."""

import json

import pytest
import torch

import netslim
from netslim.budget.space import KEEP, Space, allocation_recipe, decoder_projections, fixed_bytes, option_bytes
from netslim.errors import ConfigError
from netslim.export.codecs import decode, encode
from netslim.models.adapter import ModelAdapter
from tiny_models import tiny_model


def test_a_quantized_tensor_is_packed_at_its_declared_width_whatever_its_values():
    codes = torch.tensor([[0, 1, 2, 3] * 8], dtype=torch.uint8)  # 2 bits would do
    parts, record = encode(codes, "lowbit", None, bits=4)
    assert record["bits"] == 4 and parts["words"].numel() == 4
    assert torch.equal(decode(parts, record).to(torch.uint8), codes)
    assert encode(codes, "lowbit", None)[1]["bits"] == 2


def test_per_layer_grids_in_one_gptq_stage(token_windows):
    model = tiny_model("llama")
    stage = {"method": "gptq", "bits": 4, "group_size": 16,
             "layers": {"model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 32}, "*.v_proj": {"bits": 3, "group_size": 16}}}
    result = netslim.compress(model, stage, token_windows, progress=False)
    grids = {r.name: (r.bits, r.group_size) for r in result.layers}
    assert grids["model.layers.0.mlp.down_proj"] == (8, 32)
    assert grids["model.layers.1.mlp.down_proj"] == (4, 16)
    assert grids["model.layers.0.self_attn.v_proj"] == grids["model.layers.1.self_attn.v_proj"] == (3, 16)
    assert grids["model.layers.0.self_attn.q_proj"] == (4, 16)


@pytest.mark.parametrize("stage, message", [
    ({"method": "gptq", "layers": {"*.nothing": {"bits": 3, "group_size": 16}}}, "names no layer it quantizes"),
    ({"method": "gptq", "layers": {"*.v_proj": {"bits": 9, "group_size": 16}}}, "bits=9"),
    ({"method": "rtn", "gguf": "q4_0", "layers": {"*.v_proj": {"bits": 3, "group_size": 16}}}, "cannot be combined"),
])
def test_bad_per_layer_grids_are_refused_before_work(stage, message, token_windows):
    with pytest.raises(ConfigError, match=message):
        netslim.compress(tiny_model("llama"), stage, token_windows, progress=False)


def test_predicted_bytes_are_the_bytes_on_disk(tmp_path, token_windows):
    """Every option of the space, mixed in one model with kept layers: the prediction is exact."""
    model = tiny_model("llama")
    space = Space(bits=(2, 3, 4, 8), groups=(16, 32))
    projections = decoder_projections(ModelAdapter.from_model(model))
    labels = space.labels()
    choice = {name: labels[i % len(labels)] for i, name in enumerate(projections)}
    assert KEEP in choice.values() and len(set(choice.values())) == len(labels)
    predicted = fixed_bytes(model, projections) + sum(option_bytes(projections[n], o, space) for n, o in choice.items())
    result = netslim.compress(model, allocation_recipe(choice, space), token_windows, progress=False)
    netslim.save(result, tmp_path / "out")
    storage = json.loads((tmp_path / "out" / "netslim.json").read_text())["storage"]
    assert storage["summary"]["tensor_bytes"] == predicted
    kept = [n for n, o in choice.items() if o == KEEP]
    assert all(storage["tensors"][f"{n}.weight"]["codec"] == "dense" for n in kept)


def test_an_allocation_is_one_replayable_stage():
    space = Space(bits=(3, 4), groups=(32,))
    choice = {"a.q": "b4 g32", "a.k": "b4 g32", "a.v": "b3 g32", "a.o": KEEP}
    [stage] = allocation_recipe(choice, space)
    assert (stage["bits"], stage["group_size"], stage["ignore"]) == (4, 32, ["a.o"])
    assert stage["layers"] == {"a.v": {"bits": 3, "group_size": 32}}
    with pytest.raises(ConfigError, match="quantizes no layer"):
        allocation_recipe({"a.q": KEEP}, space)
    with pytest.raises(ConfigError, match="search space"):
        Space(bits=(9,))
