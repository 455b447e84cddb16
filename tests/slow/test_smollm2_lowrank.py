"""Truncation-aware whitening beats plain SVD on a real model, as SVD-LLM reports (issue 5).

Both factorize the first ten of the 30 blocks (the SVDs in float64 dominate the time; plain SVD
at 20% already multiplies the perplexity many times there).
"""

import math

import pytest

import netslim

pytestmark = pytest.mark.slow

LATER_BLOCKS = ["model.layers.1?.*", "model.layers.2?.*"]  # blocks 10-29 stay dense


def test_whitened_svd_20_beats_plain_svd_20_on_smollm2(smollm2_source, smollm2_small_protocol):
    calib, evals = smollm2_small_protocol
    ppl = {}
    for method in ("svd", "svd_llm"):
        lm = netslim.load_model(smollm2_source)
        before = netslim.evaluate(lm, data=evals, progress=False).size.params if method == "svd" else None
        netslim.compress(lm, {"method": method, "ratio": 0.2, "ignore": LATER_BLOCKS}, calib, progress=False)
        evaluation = netslim.evaluate(lm, data=evals, progress=False)
        ppl[method] = evaluation.ppl
        if before is not None:
            assert 0.04 < 1 - evaluation.size.params / before < 0.06  # 20% of the ~27% in their projections
    assert all(math.isfinite(v) for v in ppl.values())
    assert ppl["svd_llm"] < ppl["svd"], ppl
