"""A minimal supervised training loop that drives the sparsity callbacks and distillation.

It is the reference wiring of the callback hooks (see :mod:`netslim.training.callbacks`), used
by ``examples/fashion_mnist.py`` and the benchmarks; any other loop can call the same hooks.

Example:
    >>> cb = make_callback(model, GMPConfig(final_sparsity=0.8, end_step=900, frequency=50))
    >>> fit(model, images, labels, epochs=2, callback=cb)
    >>> accuracy(model, test_images, test_labels)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from netslim.training.callbacks import SparsityCallback
from netslim.training.distill import DistillConfig, distillation_loss


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: float = 1.0,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    callback: SparsityCallback | None = None,
    teacher: nn.Module | None = None,
    distill: DistillConfig = DistillConfig(),
    seed: int = 0,
) -> dict:
    """Train ``model`` with AdamW and a cosine learning rate on in-memory tensors.

    Args:
        model: The classifier to train (in place).
        inputs: (N, ...) input tensor; labels: (N,) class ids.
        epochs: Passes over the data; a fraction trains on part of the last pass.
        callback: Sparsity callback whose hooks are called around every step.
        teacher: A model to distill from (kept in eval mode, no gradients).
        distill: Temperature and mixing weight when a teacher is given.
        seed: Seed of the batch order.

    Returns:
        ``{"steps", "final_loss", "sparsity"}`` (``sparsity`` is the callback's report or None).
    """
    steps_per_epoch = math.ceil(len(labels) / batch_size)
    total = max(1, round(epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    generator = torch.Generator().manual_seed(seed)
    if teacher is not None:
        teacher.eval()
    if callback is not None:
        callback.on_train_begin()
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(labels), generator=generator)
        batch = order[(step % steps_per_epoch) * batch_size:][:batch_size]
        loss = _loss(model, inputs[batch], labels[batch], teacher, distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if callback is not None:
            callback.on_step_end(step)
    report = callback.on_train_end() if callback is not None else None
    model.eval()
    return {"steps": total, "final_loss": float(loss.detach()), "sparsity": report}


def _loss(model, x, y, teacher, distill) -> torch.Tensor:
    logits = model(x)
    if teacher is None:
        return F.cross_entropy(logits, y)
    with torch.no_grad():
        teacher_logits = teacher(x)
    return distillation_loss(logits, teacher_logits, y, distill)


@torch.no_grad()
def accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    model.eval()
    correct = sum(
        int((model(inputs[i:i + batch_size]).argmax(-1) == labels[i:i + batch_size]).sum())
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)
