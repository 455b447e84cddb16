"""Distillation from the dense model through its cached top-k log-probabilities.

Before compression, the dense model's log-softmax at temperature ``T`` is computed once on
every recovery window and only its ``k`` largest entries are kept (values and token ids), so
the teacher need not stay in memory while the compressed model trains. The loss is the
KL divergence ``KL(teacher || student)`` over the ``k`` cached tokens plus one bucket holding
the rest of the vocabulary (the teacher's left-over mass against the student's), times
``T**2`` as in Hinton et al. (2015). With ``k`` equal to the vocabulary it is the full KL
divergence; a live teacher goes through the same truncation, so cached and live give the same
loss.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


@dataclass
class TopK:
    """The teacher's ``k`` largest log-probabilities per predicted position.

    Attributes:
        logprobs: (windows, seqlen - 1, k) float32, at :attr:`temperature`.
        ids: (windows, seqlen - 1, k) int32 token ids.
        temperature: The softening temperature they were computed at.
    """

    logprobs: torch.Tensor
    ids: torch.Tensor
    temperature: float

    def __getitem__(self, rows) -> TopK:
        return TopK(self.logprobs[rows], self.ids[rows], self.temperature)

    @classmethod
    def from_logits(cls, logits: torch.Tensor, k: int, temperature: float) -> TopK:
        """From (windows, seqlen, vocab) logits: the positions that predict a next token."""
        logprobs = F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
        values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
        return cls(values, ids.to(torch.int32), temperature)


@torch.no_grad()
def cache_teacher(model: nn.Module, ids: torch.Tensor, k: int, temperature: float, progress: bool = True,
                  autocast: bool = False) -> tuple[TopK, torch.Tensor]:
    """Top-``k`` log-probabilities of ``model`` on every window of ``ids``, one window at a time
    (``autocast``: forwards under bfloat16 CPU autocast, log-softmax in float32), and from the
    same forwards the (windows,) mean next-token cross-entropy of each window."""
    parts, losses = [], []
    for i in tqdm(range(ids.shape[0]), desc="teacher", unit="window", disable=not progress):
        out = logits(model, ids[i:i + 1], autocast)
        parts.append(TopK.from_logits(out, k, temperature))
        losses.append(token_loss(out, ids[i:i + 1]))
    top = TopK(torch.cat([p.logprobs for p in parts]), torch.cat([p.ids for p in parts]), temperature)
    return top, torch.stack(losses).float()


@torch.no_grad()
def window_losses(model: nn.Module, ids: torch.Tensor, progress: bool = True, desc: str = "loss",
                  autocast: bool = False) -> torch.Tensor:
    """(windows,) mean next-token cross-entropy of ``model`` on each window (on the model's device)."""
    ids = ids.to(next(model.parameters()).device)
    losses = [token_loss(logits(model, ids[i:i + 1], autocast), ids[i:i + 1])
              for i in tqdm(range(ids.shape[0]), desc=desc, unit="window", disable=not progress)]
    return torch.stack(losses).float()


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX; read from Linux's
    ``/proc/cpuinfo``, so ``False`` where that file is missing)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def logits(model: nn.Module, ids: torch.Tensor, autocast: bool = False) -> torch.Tensor:
    """The model's logits on (batch, seqlen) ids, under bfloat16 CPU autocast if asked."""
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        return model(input_ids=ids, use_cache=False).logits


def token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of (batch, seqlen, vocab) logits on (batch, seqlen) ids."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


def topk_kd_loss(student_logits: torch.Tensor, teacher: TopK) -> torch.Tensor:
    """``T**2`` times the mean, over predicted positions, of KL(teacher || student) on the
    teacher's top-k tokens plus the bucket of all other tokens.

    Args:
        student_logits: (batch, seqlen, vocab) logits of the model being trained.
        teacher: The teacher's top-k entries of the same windows.
    """
    t = teacher.temperature
    student = F.log_softmax(student_logits[:, :-1].float() / t, dim=-1)
    picked = student.gather(-1, teacher.ids.long())
    p_teacher = teacher.logprobs.exp()
    head = (p_teacher * (teacher.logprobs - picked)).sum(-1)
    rest_teacher = (1 - p_teacher.sum(-1)).clamp_min(0)
    rest_student = (1 - picked.exp().sum(-1)).clamp_min(1e-12)
    tail = torch.where(rest_teacher > 1e-9, rest_teacher * (rest_teacher.clamp_min(1e-12).log() - rest_student.log()),
                       torch.zeros_like(rest_teacher))
    return (head + tail).mean() * t**2
