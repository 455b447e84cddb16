"""Knowledge distillation from the dense model while a pruned one recovers.

Hinton, Vinyals and Dean, "Distilling the Knowledge in a Neural Network", 2015
(https://arxiv.org/abs/1503.02531): the student matches the teacher's softened distribution,
``KL(softmax(t / T) || softmax(s / T)) * T**2`` (the ``T**2`` keeps gradient magnitudes
comparable across temperatures), mixed with the task loss.

Recipe::

    kd = DistillConfig(temperature=4.0, alpha=0.7)
    with torch.no_grad():
        teacher_logits = dense(x)
    loss = distillation_loss(student(x), teacher_logits, y, kd)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field


class DistillConfig(BaseModel):
    """Distillation settings.

    Attributes:
        temperature: Softening temperature ``T`` of both distributions.
        alpha: Weight of the distillation term; the task loss gets ``1 - alpha``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(2.0, gt=0.0)
    alpha: float = Field(0.5, ge=0.0, le=1.0)


def kd_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(teacher || student)`` at temperature ``T``, averaged over all rows.

    Logits of any shape (..., classes) are flattened to rows, so (batch, seq, vocab) works too.
    """
    classes = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, classes).float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.reshape(-1, classes).float() / temperature, dim=-1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature**2


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    cfg: DistillConfig = DistillConfig(),
) -> torch.Tensor:
    """``alpha * kd_divergence + (1 - alpha) * cross_entropy(student, labels)``.

    Without ``labels`` only the distillation term is returned. Labels equal to -100 are
    ignored by the task loss (the ``transformers`` convention).
    """
    kd = kd_divergence(student_logits, teacher_logits.detach(), cfg.temperature)
    if labels is None:
        return kd
    task = F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100)
    return cfg.alpha * kd + (1.0 - cfg.alpha) * task
