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
from netslim.engine.distributed import all_sum, shard, world_size

LOGITS_PER_CHUNK = 2**24  # float32 logits held at once by perplexity_from_hidden (64 MiB)


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
def perplexity(model: nn.Module, windows: TokenWindows, progress: bool = True, batch_size: int = 1) -> Perplexity:
    """Perplexity of a causal LM on ``windows``, ``batch_size`` windows per forward pass (the
    log-softmax in float32 whatever the model's dtype). Under several processes each computes
    its share of the windows and the sums are added (:mod:`netslim.engine.distributed`)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    mine = shard(windows.ids, "evaluation")
    bar = tqdm(total=len(mine), desc="perplexity", unit="window", disable=not progress)
    try:
        for batch in mine.split(batch_size):
            ids = batch.to(device)
            logits = model(ids, use_cache=False).logits[:, :-1].float()
            nll = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="sum")
            total_nll += float(nll)
            total_tokens += ids[:, 1:].numel()
            bar.update(ids.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    if world_size() > 1:
        sums = torch.tensor([total_nll, total_tokens], dtype=torch.float64, device=device)
        all_sum([sums])
        total_nll, total_tokens = float(sums[0]), int(sums[1])
    return _result(total_nll, total_tokens, windows)


def head_slices(lm_head: nn.Module):
    """The head of a model in memory as :func:`perplexity_from_hidden` takes it: one slice."""
    return lambda: [(lm_head.weight, lm_head.bias)]


@torch.no_grad()
def perplexity_from_hidden(final_norm: nn.Module, head, hidden: torch.Tensor, windows: TokenWindows,
                           batch_size: int = 1, softcap: float | None = None) -> Perplexity:
    """Perplexity of ``windows`` from the hidden states leaving the last block (an offloaded
    run, which never holds the whole model): the final norm and head, then the same NLL as
    :func:`perplexity`.

    ``head()`` gives the head's rows in vocabulary order as ``(weight rows, bias rows or
    None)`` slices (:func:`head_slices` for a head in memory, a checkpoint read slice by slice
    for a large vocabulary). The log-sum-exp over the vocabulary is accumulated slice by slice,
    a few tokens at a time, so neither the head nor the logits need be whole in memory.
    ``softcap``: the config's ``final_logit_softcapping`` (Gemma 2 and 3).
    """
    states = torch.cat([final_norm(hidden[s:s + batch_size])[:, :-1].flatten(0, 1)
                        for s in range(0, hidden.shape[0], batch_size)])
    targets = windows.ids[:, 1:].flatten().to(states.device)
    top = torch.full(targets.shape, -math.inf, device=states.device)  # running max logit per token
    total = torch.zeros(targets.shape, device=states.device)  # sum of exp(logit - top)
    picked = torch.zeros(targets.shape, device=states.device)  # the target's logit
    first_row = 0
    for weight, bias in head():
        rows = weight.shape[0]
        step = max(1, LOGITS_PER_CHUNK // rows)  # tokens per product
        for first in range(0, states.shape[0], step):
            span = slice(first, first + step)
            logits = F.linear(states[span], weight, bias).float()
            if softcap:
                logits = torch.tanh(logits / softcap) * softcap
            new_top = torch.maximum(top[span], logits.max(dim=1).values)
            total[span] = total[span] * torch.exp(top[span] - new_top) + torch.exp(logits - new_top[:, None]).sum(1)
            top[span] = new_top
            local = targets[span] - first_row
            inside = (local >= 0) & (local < rows)
            picked[span][inside] = logits[inside.nonzero().squeeze(1), local[inside]]
        first_row += rows
    total_nll = float((top + total.log() - picked).double().sum())
    return _result(total_nll, targets.numel(), windows)


def _result(total_nll: float, total_tokens: int, windows: TokenWindows) -> Perplexity:
    mean = total_nll / total_tokens
    ppl = math.exp(mean) if mean < math.log(1e300) else math.inf  # nan stays nan
    return Perplexity(ppl, mean, total_tokens, windows)
