"""Decisions are records: a saved recipe.yaml holds the resolved per-block and per-layer choices,
and replaying it on the original model reproduces the same weights bit for bit."""

import pytest
import torch
import yaml

import netslim
from tiny_models import tiny_model

CASES = {
    "owl": ({"method": "wanda", "ratio": 0.5, "allocation": "owl", "owl_lambda": 0.1}, "block_ratios"),
    "sensitivity ranks": ({"method": "svd_llm", "ratio": 0.3, "allocation": "sensitivity"}, "ranks"),
    "global width": ({"method": "width", "ratio": 0.3, "score": "flap", "allocation": "global"}, "block_units"),
    "depth": ({"method": "depth", "ratio": 0.5}, "remove"),
}


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_recipe_replays_to_identical_weights(case, tmp_path, token_windows):
    stage, resolved_key = CASES[case]
    family = "mistral" if case == "global width" else "llama"
    model = tiny_model(family)
    result = netslim.compress(model, stage, token_windows, progress=False)
    netslim.save(result, tmp_path / "out")

    saved = yaml.safe_load((tmp_path / "out" / "recipe.yaml").read_text())
    decided = saved[0][resolved_key]
    assert decided, f"recipe.yaml does not spell out {resolved_key}"
    if case == "owl":
        assert len(decided) == 2 and decided[0] != decided[1]  # per-block values, not the uniform 0.5
    if case == "sensitivity ranks":
        assert len(decided) > 4 and len(set(decided.values())) > 1  # a rank per factorized projection

    replayed = tiny_model(family)
    netslim.compress(replayed, netslim.load_recipe(tmp_path / "out" / "recipe.yaml"), token_windows, progress=False)
    expected, got = _state(model), _state(replayed)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), name


def test_replay_needs_no_planning_sweep(token_windows, monkeypatch):
    """Resolved stages do not re-plan: OWL's sweep and depth's scoring are not run again."""
    from netslim.engine import sequential

    model = tiny_model("llama")
    resolved = netslim.compress(model, [{"method": "magnitude", "allocation": "owl"}, {"method": "depth", "ratio": 0.5}],
                                token_windows, progress=False).recipe

    def no_scoring(*_a, **_k):
        raise AssertionError("replay scored the blocks again")

    monkeypatch.setattr(sequential, "iter_block_stats", no_scoring)
    replayed = netslim.compress(tiny_model("llama"), resolved, None, progress=False)  # no calibration data needed
    assert replayed.recipe == resolved
