"""Recovery lowers the perplexity of a 2:4-pruned smollm2 and keeps its 2:4 groups (issue 17)."""

import pytest

import netslim
from netslim.models.adapter import ModelAdapter, linear_weight

pytestmark = pytest.mark.slow


def test_lora_distillation_recovers_wanda_2_4_on_smollm2(smollm2_source, smollm2_small_protocol):
    calib, evals = smollm2_small_protocol
    dense = netslim.load_model(smollm2_source)
    lm = netslim.load_model(smollm2_source)
    netslim.compress(lm, {"method": "wanda", "ratio": 0.5, "pattern": "2:4"}, calib, progress=False)
    before = netslim.evaluate(lm, data=evals, progress=False).ppl
    pruned = {n: linear_weight(m) == 0 for n, m in ModelAdapter.from_model(lm.model).block_linears(7).items()}
    summary = netslim.recover(lm, dense, {"method": "recover", "mode": "lora", "seqlen": 128, "windows": 16,
                                          "batch_size": 4, "tokens": 4 * 4 * 128, "lr": 1e-3},
                              progress=False)
    after = netslim.evaluate(lm, data=evals, progress=False).ppl
    assert after < 0.9 * before, (before, after, summary["losses"])
    for name, module in ModelAdapter.from_model(lm.model).block_linears(7).items():
        assert (linear_weight(module) == 0).equal(pruned[name]), name
