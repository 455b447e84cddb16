"""MAC counts against hand-computed values."""

from __future__ import annotations

import torch
from cnn_models import Attention
from torch import nn

from netslim.eval.flops import count_macs
from netslim.eval.size import count_params


def test_conv_linear_and_depthwise_macs():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(), nn.Linear(8 * 16, 10)
    )
    expected = 16 * 8 * 27 + 16 * 8 * 9 + 128 * 10
    assert count_macs(model, (torch.randn(1, 3, 4, 4),)) == expected


def test_attention_counts_projections_and_both_products():
    attn = Attention(16, 2)
    n, d = 5, 16
    expected = 4 * n * d * d + 2 * (n * n * d)  # q, k, v, proj; scores and weighted sum
    assert count_macs(attn, (torch.randn(1, n, d),)) == expected


def test_params_count_tied_weights_once_even_on_meta():
    with torch.device("meta"):  # (Module.to("meta") would untie them)
        emb = nn.Embedding(10, 4)
        head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    model = nn.ModuleDict({"emb": emb, "head": head})
    assert count_params(model) == 40
