"""EoRA compensation: it lowers the output error of a compressed layer, after any stage."""

import pytest
import torch

import netslim
from netslim.engine.capture import capture_block_inputs
from netslim.errors import ConfigError
from netslim.models.adapter import ModelAdapter
from netslim.nn.lowrank import LowRankCompensated

from tiny_models import tiny_model


@torch.no_grad()
def _block_error(recipe, windows):
    """Mean squared error of block 0's output against the dense block, on the calibration data."""
    model = tiny_model("llama")
    adapter = ModelAdapter.from_model(model)
    hidden, calls = capture_block_inputs(adapter, windows.ids)
    run = lambda: adapter.blocks[0](hidden, *calls[0].args, **calls[0].kwargs)[0]  # noqa: E731
    dense = run()
    netslim.compress(model, recipe, windows, progress=False)
    return float((run() - dense).square().mean()), model


@pytest.mark.parametrize(
    "stage",
    [
        {"method": "wanda", "ratio": 0.6},
        {"method": "magnitude", "ratio": 0.5, "pattern": "2:4"},
        {"method": "svd", "ratio": 0.5},
        {"method": "rtn", "bits": 3, "group_size": 32},
    ],
)
def test_compensation_lowers_the_output_error_of_a_compressed_layer(stage, token_windows):
    plain, _ = _block_error([stage], token_windows)
    compensated, model = _block_error([stage, {"method": "eora", "rank": 8}], token_windows)
    assert compensated < 0.8 * plain
    q = ModelAdapter.from_model(model).block_linears(0)["model.layers.0.self_attn.q_proj"]
    assert isinstance(q, LowRankCompensated) and q.rank == 8


def test_compensation_keeps_the_base_module_untouched(token_windows):
    model = tiny_model("llama")
    netslim.compress(model, [{"method": "magnitude", "ratio": 0.5}, {"method": "eora", "rank": 4}], token_windows, progress=False)
    q = ModelAdapter.from_model(model).block_linears(1)["model.layers.1.self_attn.q_proj"]
    assert float((q.base.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_full_rank_compensation_restores_the_dense_layer(token_windows):
    plain, _ = _block_error([{"method": "magnitude", "ratio": 0.5}], token_windows)
    full, _ = _block_error([{"method": "magnitude", "ratio": 0.5}, {"method": "eora", "rank": 128, "damp": 1e-9}], token_windows)
    assert full < 1e-4 * plain


def test_eora_alone_is_a_no_op_and_needs_data():
    with pytest.raises(ConfigError, match="calibration"):
        netslim.compress(tiny_model("llama"), {"method": "eora"}, None, progress=False, tokenizer=None)


@pytest.mark.parametrize(
    "recipe",
    [
        [{"method": "eora", "rank": 4}],
        [{"method": "width", "ratio": 0.3, "score": "wanda"}, {"method": "eora", "rank": 4}],
    ],
    ids=["alone", "after-model-scope"],
)
def test_eora_with_nothing_to_compensate_in_its_pass_is_refused(recipe, token_windows):
    model = tiny_model("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ConfigError, match="compensates the stages before it"):
        netslim.compress(model, recipe, token_windows, progress=False)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # refused before any change
