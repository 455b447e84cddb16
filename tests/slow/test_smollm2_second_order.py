"""GPTQ beats RTN at the same 4-bit g128 grid on a real model, as the GPTQ paper reports (issue 3).

GPTQ runs with ``act_order``. Without it, on smollm2-135m under this small protocol GPTQ only
ties RTN (perplexity 39.6 vs 39.8; dense 31.8), and more calibration windows do not help
(16 windows: 40.3, 32 windows: 41.5): every layer's output error on held-out tokens drops
2-4x, but v_proj/o_proj alone cost 6 points of perplexity. The OBS updates push the rounding
error into input directions that are rare in the calibration data, such as the attention-sink
state at each window's first position, whose value vector every later token reads.
Activation order quantizes the most active inputs first and gives 36.6.
"""

import math

import pytest

import netslim
from netslim.nn.quantized import QuantizedLinear

pytestmark = pytest.mark.slow


def test_gptq_4bit_g128_beats_rtn_on_smollm2(smollm2_source, smollm2_small_protocol):
    calib, evals = smollm2_small_protocol
    recipes = {
        "rtn": {"method": "rtn", "bits": 4, "group_size": 128},
        "gptq": {"method": "gptq", "bits": 4, "group_size": 128, "act_order": True},
    }
    ppl = {}
    for method, recipe in recipes.items():
        lm = netslim.load_model(smollm2_source)
        result = netslim.compress(lm, recipe, calib, progress=False)
        assert len(result.layers) == 30 * 7
        assert isinstance(lm.model.model.layers[5].mlp.down_proj, QuantizedLinear)
        ppl[method] = netslim.evaluate(lm, data=evals, progress=False).ppl
    dense = netslim.evaluate(netslim.load_model(smollm2_source), data=evals, progress=False).ppl
    assert all(math.isfinite(v) for v in ppl.values())
    assert dense < ppl["gptq"] < ppl["rtn"] < 1.5 * dense, (dense, ppl)
