"""Wanda beats magnitude on a real model, as the Wanda paper reports (issue 2)."""

import math

import pytest

import netslim
from netslim.models.adapter import ModelAdapter, linear_weight

pytestmark = pytest.mark.slow


def test_wanda_50_beats_magnitude_50_on_smollm2(smollm2_source, smollm2_small_protocol):
    calib, evals = smollm2_small_protocol
    ppl = {}
    for method in ("magnitude", "wanda"):
        lm = netslim.load_model(smollm2_source)
        netslim.compress(lm, {"method": method, "ratio": 0.5}, calib, progress=False)
        ppl[method] = netslim.evaluate(lm, data=evals, progress=False).ppl
        q = linear_weight(ModelAdapter.from_model(lm.model).block_linears(5)["model.layers.5.self_attn.q_proj"])
        assert float((q == 0).float().mean()) >= 0.5
    dense = netslim.evaluate(netslim.load_model(smollm2_source), data=evals, progress=False).ppl
    assert all(math.isfinite(v) for v in ppl.values())
    assert dense < ppl["wanda"] < ppl["magnitude"], (dense, ppl)
