"""Resumable passes: an interrupted run continues after its last finished block."""

from typing import ClassVar, Literal

import pytest
import torch

import netslim
from netslim.engine.stats import Stat
from netslim.methods.pruning import PruningConfig, apply_scores
from netslim.methods.registry import register_method, unregister_method

CALLS: list[str] = []
FAIL_AT = {"block": None}


class FlakyConfig(PruningConfig):
    method: Literal["flaky_test"] = "flaky_test"
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})


@pytest.fixture
def flaky():
    def fn(layer, stats, cfg):
        if layer.block_index == FAIL_AT["block"]:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        CALLS.append(layer.name)
        return apply_scores(layer, layer.weight.abs() * stats.act_norm, cfg)

    register_method("flaky_test", FlakyConfig)(fn)
    CALLS.clear()
    yield
    unregister_method("flaky_test")
    FAIL_AT["block"] = None


def test_interrupted_run_resumes_after_last_finished_block(flaky, token_windows, tmp_path):
    from tiny_models import tiny_model

    reference = tiny_model("llama")
    netslim.compress(reference, {"method": "flaky_test"}, token_windows, progress=False)
    CALLS.clear()

    FAIL_AT["block"] = 1
    model = tiny_model("llama")
    with pytest.raises(KeyboardInterrupt):
        netslim.compress(model, {"method": "flaky_test"}, token_windows, progress=False, checkpoint_dir=tmp_path)
    assert all(".layers.0." in n for n in CALLS) and len(CALLS) == 7

    CALLS.clear()
    FAIL_AT["block"] = None
    fresh = tiny_model("llama")  # a new process would load the untouched input again
    result = netslim.compress(fresh, {"method": "flaky_test"}, token_windows, progress=False, checkpoint_dir=tmp_path)
    assert CALLS and all(".layers.1." in n for n in CALLS)  # block 0 was restored, not redone
    assert len(result.layers) == 14
    for (name, a), (_, b) in zip(reference.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_checkpoint_of_another_job_is_ignored(flaky, token_windows, tmp_path):
    from tiny_models import tiny_model

    netslim.compress(tiny_model("llama"), {"method": "flaky_test", "sparsity": 0.3}, token_windows,
                     progress=False, checkpoint_dir=tmp_path)
    CALLS.clear()
    netslim.compress(tiny_model("llama"), {"method": "flaky_test", "sparsity": 0.6}, token_windows,
                     progress=False, checkpoint_dir=tmp_path)
    assert len(CALLS) == 14  # different recipe: nothing restored
