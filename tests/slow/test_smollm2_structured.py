"""FLAP-style width pruning beats magnitude-scored width pruning on a real model (issue 4)."""

import math

import pytest

import netslim
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter

pytestmark = pytest.mark.slow


def test_flap_width_20_beats_magnitude_width_20_on_smollm2(smollm2_source, smollm2_small_protocol):
    calib, evals = smollm2_small_protocol
    dense = netslim.load_model(smollm2_source)
    dense_eval = netslim.evaluate(dense, data=evals, progress=False)
    ppl = {}
    for score in ("magnitude", "flap"):
        lm = netslim.load_model(smollm2_source)
        netslim.compress(lm, {"method": "width", "ratio": 0.2, "score": score}, calib, progress=False)
        evaluation = netslim.evaluate(lm, data=evals, progress=False)
        ppl[score] = evaluation.ppl
        assert evaluation.size.params < dense_eval.size.params - 15_000_000  # 20% of ~106M decoder params
        adapter = ModelAdapter.from_model(lm.model)
        assert surgery.intermediate_size(adapter, 3) < 1536 and lm.model.config.intermediate_size < 1536
        assert lm.model.generate(evals.ids[:1, :8], max_new_tokens=4, do_sample=False).shape == (1, 12)
    assert all(math.isfinite(v) for v in ppl.values())
    assert dense_eval.ppl < ppl["flap"] < ppl["magnitude"], (dense_eval.ppl, ppl)
