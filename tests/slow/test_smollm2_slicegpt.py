"""SliceGPT on smollm2-135m: finite perplexity, ordered by slicing, and an exact reload (issue 4)."""

import math

import pytest
import torch

import netslim
from netslim.models.sliced import SlicedDecoderLayer

pytestmark = pytest.mark.slow


def test_slicegpt_perplexity_grows_with_slicing_on_smollm2(smollm2_source, smollm2_small_protocol, tmp_path):
    calib, evals = smollm2_small_protocol
    dense = netslim.evaluate(netslim.load_model(smollm2_source), data=evals, progress=False).ppl
    ppl = {}
    for slicing in (0.1, 0.3):
        lm = netslim.load_model(smollm2_source)
        result = netslim.compress(lm, netslim.SliceGPTConfig(ratio=slicing), calib, progress=False)
        ppl[slicing] = netslim.evaluate(lm, data=evals, progress=False).ppl
    assert all(math.isfinite(v) for v in ppl.values())
    assert dense < ppl[0.1] < ppl[0.3] < 3 * dense, (dense, ppl)
    # the last (30%) model reloads exactly and stays sliced
    netslim.save(result, tmp_path / "sliced")
    loaded = netslim.load(tmp_path / "sliced").model
    assert isinstance(loaded.model.layers[0], SlicedDecoderLayer)
    assert loaded.model.embed_tokens.weight.shape[1] == 400
    with torch.no_grad():
        ids = evals.ids[:1, :64]
        assert torch.equal(loaded(ids).logits, lm.model(ids).logits)
