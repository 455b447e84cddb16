"""Perplexity over non-overlapping token windows.

ppl = exp(mean negative log-likelihood over every predicted token), where each window of
``seqlen`` tokens predicts its tokens 2..seqlen from the ones before (no context carried
across windows). With equal-length windows this equals the reference scripts' mean of
per-window losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from netslim.data.windows import TokenWindows


@dataclass(frozen=True)
class Perplexity:
    """A perplexity and the protocol it was measured under."""

    ppl: float
    nll: float
    predicted_tokens: int
    windows: TokenWindows

    def protocol(self) -> dict:
        """Dataset, seqlen, windows and token counts, for reports."""
        w = self.windows
        return {
            "dataset": w.source,
            "seqlen": w.seqlen,
            "windows": len(w),
            "tokens": int(w.ids.numel()),
            "predicted_tokens": self.predicted_tokens,
            "bos_per_window": w.bos,
        }


@torch.no_grad()
def perplexity(model: nn.Module, windows: TokenWindows, progress: bool = True) -> Perplexity:
    """Perplexity of a causal LM on ``windows``, one window per forward pass."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    try:
        for row in tqdm(windows.ids, desc="perplexity", unit="window", disable=not progress):
            ids = row.unsqueeze(0).to(device)
            logits = model(ids, use_cache=False).logits[0, :-1].float()
            nll = F.cross_entropy(logits, ids[0, 1:], reduction="sum")
            total_nll += float(nll)
            total_tokens += ids.shape[1] - 1
    finally:
        model.train(was_training)
    mean = total_nll / total_tokens
    ppl = math.exp(mean) if mean < math.log(1e300) else math.inf  # nan stays nan
    return Perplexity(ppl, mean, total_tokens, windows)
