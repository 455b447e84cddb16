"""The recovery training loop: AdamW, warm-up then cosine decay, a token budget, resumable.

Each optimizer step sees ``batch_size`` windows, run one at a time with their gradients
accumulated (so memory holds one window's activations), clipped to norm 1. Windows are visited
in a seeded order, a new permutation per pass, so the data of any step is known from its
number alone and a resumed run continues exactly where the last checkpoint left it.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from netslim.recovery.adapters import Trainable
from netslim.recovery.teacher import TopK, logits, token_loss, topk_kd_loss


def window_order(windows: int, step: int, batch_size: int, seed: int) -> list[int]:
    """The window indices of optimizer step ``step`` (0-based)."""
    first = step * batch_size
    picked = []
    for position in range(first, first + batch_size):
        epoch, offset = divmod(position, windows)
        order = torch.randperm(windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        picked.append(int(order[offset]))
    return picked


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay to zero at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1 + math.cos(math.pi * progress))


def loss_of(model: nn.Module, ids: torch.Tensor, teacher: TopK | None, loss: str, kd_weight: float,
            autocast: bool) -> torch.Tensor:
    """The recovery loss of one batch of windows (``teacher``: their cached top-k, for ``kd``)."""
    student = logits(model, ids, autocast)
    if loss == "ce":
        return token_loss(student, ids)
    kd = topk_kd_loss(student, teacher)
    return kd if loss == "kd" else kd_weight * kd + (1 - kd_weight) * token_loss(student, ids)


def train(model: nn.Module, trainable: Trainable, ids: torch.Tensor, teacher: TopK | None, *, loss: str,
          kd_weight: float, steps: int, batch_size: int, lr: float, warmup: int, weight_decay: float,
          seed: int, autocast: bool = False, checkpoint: Path | None = None, save_every: int = 25,
          progress: bool = True) -> dict:
    """Train ``trainable``'s parameters for ``steps`` optimizer steps; return the loss history.

    Args:
        ids: (windows, seqlen) recovery windows; ``teacher`` holds their cached top-k rows.
        checkpoint: A file; when it exists the run resumes from it, and it is rewritten
            (atomically) every ``save_every`` steps and at the end.

    Returns:
        ``{"steps", "losses" (per step), "seconds", "resumed_at"}``.
    """
    params = list(trainable.params.values())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    start_step, spent = 0, 0.0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for name, p in trainable.params.items():
                p.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        start_step, losses, spent = int(state["step"]), list(state["losses"]), float(state["seconds"])
    began = time.perf_counter()
    bar = tqdm(total=steps, initial=start_step, desc="recover", unit="step", disable=not progress)
    for step in range(start_step, steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for index in window_order(ids.shape[0], step, batch_size, seed):
            value = loss_of(model, ids[index:index + 1], teacher[index:index + 1] if teacher is not None else None,
                            loss, kd_weight, autocast)
            (value / batch_size).backward()
            total += float(value.detach()) / batch_size
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        trainable.reapply_masks()
        losses.append(total)
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        done = step + 1
        if checkpoint is not None and (done % save_every == 0 or done == steps):
            _save(checkpoint, trainable, optimizer, done, losses, spent + time.perf_counter() - began)
    bar.close()
    return {"steps": steps, "losses": losses, "seconds": spent + time.perf_counter() - began,
            "resumed_at": start_step}


def _save(path: Path, trainable: Trainable, optimizer, step: int, losses: list[float], seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"params": {n: p.detach().clone() for n, p in trainable.params.items()},
             "optimizer": optimizer.state_dict(), "step": step, "losses": losses, "seconds": seconds}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
