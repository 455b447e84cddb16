"""Agreement metric and the fixed natural inputs."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from netslim.eval.vision import agreement, mean_kl, photo_crops


def test_agreement_known_answer():
    dense = torch.eye(6)[[0, 1, 2, 3]] * 10  # labels 0, 1, 2, 3
    pruned = torch.tensor([
        [9.0, 0, 0, 0, 0, 0],  # label 0 first: top-1 and top-5
        [5.0, 4, 0, 0, 0, 0],  # label 1 second: top-5 only
        [0.5, 1, -1, 2, 3, 4],  # label 2 the lowest of six: neither
        [0.0, 0, 0, -1, 0, 0],  # label 3 the lowest of six: neither
    ])
    assert agreement(dense, pruned) == {"top1": 0.25, "top5": 0.5}
    assert agreement(dense, dense) == {"top1": 1.0, "top5": 1.0}


def test_mean_kl_known_answer():
    p, q = torch.tensor([[0.5, 0.5]]), torch.tensor([[0.25, 0.75]])
    expected = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    assert mean_kl(p.log(), q.log()) == pytest.approx(float(expected))
    assert mean_kl(p.log(), p.log() + 3.0) == pytest.approx(0.0, abs=1e-7)  # a shift of the logits changes nothing


@pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn is not installed")
def test_photo_crops_are_deterministic_natural_images():
    crops = photo_crops(4, size=32, seed=0)
    assert crops.shape == (4, 3, 32, 32)
    assert 0 <= float(crops.min()) and float(crops.max()) <= 255 and float(crops.std()) > 10
    torch.testing.assert_close(crops, photo_crops(4, size=32, seed=0))
    assert not torch.allclose(crops, photo_crops(4, size=32, seed=1))
