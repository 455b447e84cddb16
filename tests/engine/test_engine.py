"""The sequential engine: capture, statistics, no-op equivalence, error paths."""

from typing import ClassVar, Literal

import pytest
import torch

import netslim
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.stats import Stat
from netslim.errors import ConfigError
from netslim.methods.base import MethodConfig
from netslim.methods.registry import register_method, unregister_method
from netslim.models.adapter import ModelAdapter

SEEN: dict[str, torch.Tensor] = {}


class NoopConfig(MethodConfig):
    method: Literal["noop_test"] = "noop_test"
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM, Stat.HESSIAN})


@pytest.fixture
def noop():
    def fn(layer, stats, cfg):
        SEEN[layer.name] = stats.act_norm
        SEEN[layer.name + ":H"] = stats.hessian
        return {"seen_tokens": stats.n_tokens}

    register_method("noop_test", NoopConfig)(fn)
    SEEN.clear()
    yield
    unregister_method("noop_test")


def test_noop_method_leaves_logits_unchanged(family_model, token_windows, noop):
    ids = token_windows.ids[:2]
    before = family_model(ids).logits
    result = netslim.compress(family_model, {"method": "noop_test"}, token_windows, progress=False)
    torch.testing.assert_close(family_model(ids).logits, before, rtol=0, atol=0)
    assert all(r["seen_tokens"] == token_windows.ids.numel() for r in result.layers)


def test_statistics_match_a_direct_forward(llama_model, token_windows, noop):
    captured = []
    q = llama_model.model.layers[1].self_attn.q_proj
    handle = q.register_forward_hook(lambda m, i, o: captured.append(i[0].reshape(-1, i[0].shape[-1])))
    llama_model(token_windows.ids)  # dense model: block 1 sees dense block-0 outputs
    handle.remove()
    x = torch.cat(captured)
    netslim.compress(llama_model, {"method": "noop_test"}, token_windows, progress=False)
    torch.testing.assert_close(SEEN["model.layers.1.self_attn.q_proj"], x.norm(dim=0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(SEEN["model.layers.1.self_attn.q_proj:H"], 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-4)
    # q, k and v share one accumulator
    assert SEEN["model.layers.1.self_attn.k_proj"] is not None
    torch.testing.assert_close(SEEN["model.layers.1.self_attn.k_proj"], SEEN["model.layers.1.self_attn.q_proj"])


def test_capture_and_run_block_reproduce_the_model(family_model, token_windows):
    adapter = ModelAdapter.from_model(family_model)
    hidden, calls = capture_block_inputs(adapter, token_windows.ids[:3])
    for i, block in enumerate(adapter.blocks):
        hidden = run_block(block, hidden, calls[i])
    logits = adapter.lm_head(adapter.final_norm(hidden))
    torch.testing.assert_close(logits, family_model(token_windows.ids[:3]).logits, rtol=1e-4, atol=1e-4)


class ZeroVConfig(MethodConfig):
    method: Literal["zero_v_test"] = "zero_v_test"
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})


@pytest.mark.parametrize("sequential", [True, False])
def test_true_sequential_sees_compressed_earlier_groups(llama_model, token_windows, sequential):
    def fn(layer, stats, cfg):
        if layer.name.endswith("v_proj"):
            layer.weight.zero_()  # attention output becomes exactly zero
        SEEN[layer.name] = stats.act_norm

    register_method("zero_v_test", ZeroVConfig)(fn)
    try:
        cfg = {"method": "zero_v_test", "true_sequential": sequential}
        netslim.compress(llama_model, cfg, token_windows, progress=False)
    finally:
        unregister_method("zero_v_test")
    o_input_norm = SEEN["model.layers.0.self_attn.o_proj"].abs().max()
    assert (o_input_norm == 0) if sequential else (o_input_norm > 0)


def test_data_method_without_calibration_is_an_error(llama_model):
    with pytest.raises(ConfigError, match="tokenizer"):
        netslim.compress(llama_model, {"method": "wanda"}, progress=False)


def test_data_free_method_needs_no_calibration(llama_model):
    result = netslim.compress(llama_model, {"method": "magnitude", "ratio": 0.5}, progress=False)
    assert result.calibration is None


def test_finished_blocks_hold_only_codes_during_compression(llama_model, token_windows):
    from netslim.nn.quantized import QuantizedLinear

    ids = token_windows.ids[:1]
    result = netslim.compress(llama_model, {"method": "gptq", "bits": 4, "group_size": 32}, token_windows, progress=False)
    quantized = [m for m in result.model.modules() if isinstance(m, QuantizedLinear)]
    assert quantized and all(not m._cache for m in quantized)  # every block released its float weights
    logits = result.model(ids).logits
    assert all(m._cache for m in quantized)  # rebuilt on demand
    torch.testing.assert_close(result.model(ids).logits, logits)
