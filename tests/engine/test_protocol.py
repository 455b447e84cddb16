"""The method protocol: hooks in a fixed order, engine-owned statistics, typed records and reports."""

import copy
from typing import ClassVar, Literal

import pytest
import torch
import torch.nn.functional as F

import netslim
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.records import LayerRecord
from netslim.engine.stats import Stat
from netslim.engine.step import INPUT, OUTPUT
from netslim.engine.sweep import iter_block_stats
from netslim.eval.report import Measurement, Report
from netslim.methods.base import Handler, MethodConfig, Scope
from netslim.methods.registry import register_method, unregister_method
from netslim.models.adapter import ModelAdapter

CALLS: list[tuple] = []


class ProbeConfig(MethodConfig):
    method: Literal["probe_test"] = "probe_test"
    scope: ClassVar[Scope] = Scope.BLOCK
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.GRAM})


class ProbeHandler(Handler):
    """Scales every block's MLP output projection by 0.5 and records what the engine shows it."""

    def plan(self, cfg, adapter, sweep):
        CALLS.append(("plan", sum(1 for _ in sweep(frozenset({Stat.ACT_NORM})))))
        return cfg

    def start(self, cfg, step):
        CALLS.append(("start", step.index))
        return False

    def act_block(self, cfg, step):
        seen = step.signals({INPUT: cfg.needs, OUTPUT: cfg.needs})
        CALLS.append(("act", step.index, seen[INPUT].gram, seen[OUTPUT].gram, step.hidden.clone()))
        step.adapter.block_part(step.index, step.adapter.spec.mlp_out).weight.data *= 0.5
        step.record(step.name, step.block, cfg.method, {"probed": True, "d_in": step.hidden.shape[-1]})

    def finish(self, cfg, adapter, log):
        CALLS.append(("finish", len(log.as_list())))


@pytest.fixture
def probe():
    register_method("probe_test", ProbeConfig)(ProbeHandler)
    CALLS.clear()
    yield
    unregister_method("probe_test")


def _gram(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    return sum((p.t() @ p).double() for p in flat.split(4096))


def test_hooks_run_in_order_and_each_block_sees_the_compressed_blocks_before_it(llama_model, token_windows, probe):
    reference = ModelAdapter.from_model(llama_model)
    hidden, calls = capture_block_inputs(reference, token_windows.ids)
    expected = []  # block inputs after every earlier block's down_proj was halved
    model, pristine = copy.deepcopy(llama_model), ModelAdapter.from_model(copy.deepcopy(llama_model))
    adapter = ModelAdapter.from_model(model)
    for index in range(adapter.num_blocks):
        expected.append(hidden)
        adapter.block_part(index, adapter.spec.mlp_out).weight.data *= 0.5
        hidden = run_block(adapter.blocks[index], hidden, calls[index])
    result = netslim.compress(llama_model, {"method": "probe_test"}, token_windows, progress=False)
    assert [c[0] for c in CALLS] == ["plan", "start", "act", "act", "finish"]
    assert CALLS[0][1] == 2 and CALLS[-1][1] == 2  # the sweep saw both blocks; finish saw both records
    for index, call in enumerate(CALLS[2:4]):
        _, seen_index, gram_in, gram_out, seen_hidden = call
        assert seen_index == index
        torch.testing.assert_close(seen_hidden, expected[index])
        torch.testing.assert_close(gram_in, _gram(expected[index]))
        with torch.no_grad():  # the output signal is measured before the act halves the block
            out = run_block(pristine.blocks[index], expected[index], calls[index])
        torch.testing.assert_close(gram_out, _gram(out))
    assert [r.extra["probed"] for r in result.layers] == [True, True]
    assert [r.d_in for r in result.layers] == [64, 64]


def test_sweep_gives_block_cosine_skip_loss_and_gradients(llama_model, token_windows):
    adapter = ModelAdapter.from_model(llama_model)
    needs = frozenset({Stat.BLOCK_COSINE, Stat.SKIP_LOSS, Stat.GRADIENT})
    swept = dict(iter_block_stats(adapter, token_windows, needs, windows=4, gradient_windows=2))
    hidden, calls = capture_block_inputs(adapter, token_windows.ids[:4])
    with torch.no_grad():
        out = run_block(adapter.blocks[0], hidden, calls[0])
    cosine = F.cosine_similarity(hidden.flatten(0, 1), out.flatten(0, 1), dim=-1).mean()
    assert swept[0].cosine == pytest.approx(float(cosine), abs=1e-6)
    with torch.no_grad():  # skipping the last block: the head reads what enters it
        final = run_block(adapter.blocks[0], hidden, calls[0])
        logits = adapter.lm_head(adapter.final_norm(final))[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), token_windows.ids[:4, 1:].flatten())
    assert swept[1].skip_loss == pytest.approx(float(loss), rel=1e-5)
    name = f"{adapter.block_name(1)}.mlp.down_proj"
    assert all(p.grad is None and p.requires_grad for p in llama_model.parameters())  # the sweep left no trace
    for row in token_windows.ids[:2]:
        llama_model(row[None], labels=row[None]).loss.backward()
    torch.testing.assert_close(swept[1].layers[name].grad, adapter.model.get_submodule(name).weight.grad)


def test_statistics_a_method_did_not_declare_are_refused(llama_model, token_windows):
    adapter = ModelAdapter.from_model(llama_model)
    _, block = next(iter_block_stats(adapter, token_windows, frozenset({Stat.ACT_NORM})))
    stats = next(iter(block.layers.values()))
    for read in ("hessian", "moments", "gram", "grad"):
        with pytest.raises(RuntimeError, match="does not declare"):
            getattr(stats, read)


def test_layer_records_are_typed_and_round_trip():
    record = LayerRecord("model.layers.0.mlp.up_proj")
    record.update({"bits": 4, "group_size": 128, "plugin_score": 0.5})
    assert record.bits == 4 and record["group_size"] == 128 and record["rank"] is None
    assert "bits" in record and "rank" not in record and record.extra == {"plugin_score": 0.5}
    with pytest.raises(KeyError):
        record["no_such_field"]
    data = record.as_dict()
    assert data == {"name": "model.layers.0.mlp.up_proj", "methods": [], "bits": 4, "group_size": 128,
                    "plugin_score": 0.5}
    assert LayerRecord.from_dict(data) == record


def test_report_round_trips_through_its_json_form():
    report = Report(kind="causal_lm", model="m", recipe=[{"method": "wanda"}], protocol={"dataset": "d"},
                    baseline=Measurement(params=10, ppl=2.0, nonzero_params=10, size_bytes=40),
                    compressed=Measurement(params=10, ppl=float("inf"), nonzero_params=5, size_bytes=40),
                    compress_seconds=1.0, peak_rss_bytes=1, layers=[{"name": "x"}])
    data = report.as_dict()
    assert data["compressed"]["ppl"] is None and data["params_removed"] == 0.0  # a non-finite ppl is null
    assert set(data["baseline"]) == {"ppl", "params", "nonzero_params", "size_bytes"}
    assert Report.from_dict(data).as_dict() == data
    with pytest.raises(ValueError):
        Report.from_dict({**data, "kind": "spaceship"})


def test_sweep_layer_filter_keeps_input_statistics_to_the_chosen_projections(llama_model, token_windows):
    adapter = ModelAdapter.from_model(llama_model)
    chosen = lambda name: name.endswith(".o_proj")  # noqa: E731
    _, block = next(iter_block_stats(adapter, token_windows, frozenset({Stat.MOMENTS, Stat.GRADIENT}),
                                     gradient_windows=1, layers=chosen))
    with_inputs = {name for name, stats in block.layers.items() if stats.n_tokens}
    assert with_inputs == {f"{adapter.block_name(0)}.self_attn.o_proj"}
    assert set(block.layers) == set(adapter.block_linears(0))  # every projection keeps its gradient
    assert all(stats.grad.shape == adapter.model.get_submodule(n).weight.shape for n, stats in block.layers.items())


def test_a_gradient_only_sweep_runs_no_block(llama_model, token_windows, monkeypatch):
    import netslim.engine.sweep as sweep_module

    def no_capture(*_a, **_k):
        raise AssertionError("a gradient-only sweep captured block inputs")

    monkeypatch.setattr(sweep_module, "capture_block_inputs", no_capture)
    adapter = ModelAdapter.from_model(llama_model)
    swept = list(iter_block_stats(adapter, token_windows, frozenset({Stat.GRADIENT}), gradient_windows=1))
    assert [index for index, _ in swept] == [0, 1]
    assert set(swept[1][1].layers) == set(adapter.block_linears(1))


def test_statistics_without_output_stop_each_forward_early_with_the_same_statistics(llama_model, token_windows):
    from netslim.engine.records import RunLog
    from netslim.engine.step import BlockStep

    adapter = ModelAdapter.from_model(llama_model)
    hidden, calls = capture_block_inputs(adapter, token_windows.ids)
    step = BlockStep(adapter, 0, hidden, calls[0], RunLog())
    groups = adapter.block_input_groups(0)
    ran = []
    handle = adapter.block_part(0, adapter.spec.mlp_out).register_forward_pre_hook(lambda m, a: ran.append(1))
    try:
        for subset in ([groups[0]], groups):  # q/k/v alone: only the input norm runs; all groups: up to down_proj
            full, output = step.layer_stats(subset, frozenset({Stat.HESSIAN, Stat.ACT_NORM}))
            ran.clear()
            early, none = step.layer_stats(subset, frozenset({Stat.HESSIAN, Stat.ACT_NORM}), output=False)
            assert output is not None and none is None
            for name in full:
                assert torch.equal(full[name].hessian, early[name].hessian)
                assert torch.equal(full[name].act_norm, early[name].act_norm)
            assert len(ran) == (len(token_windows.ids) if subset is groups else 0)  # down_proj reached only when its input is needed
    finally:
        handle.remove()
