"""Distillation loss: zero for identical models, the KL at temperature T otherwise."""

import pytest
import torch
import torch.nn.functional as F

from netslim.training.distill import DistillConfig, distillation_loss, kd_divergence


def test_kd_is_zero_when_student_equals_teacher():
    logits = torch.randn(8, 10)
    assert float(distillation_loss(logits, logits.clone(), cfg=DistillConfig(temperature=3.0))) == pytest.approx(0.0, abs=1e-6)
    labels = torch.randint(0, 10, (8,))
    loss = distillation_loss(logits, logits.clone(), labels, DistillConfig(alpha=0.7))
    assert float(loss) == pytest.approx(0.3 * float(F.cross_entropy(logits, labels)), rel=1e-5)


def test_kd_matches_kl_definition_and_handles_sequences():
    s, t, temp = torch.randn(2, 5, 7), torch.randn(2, 5, 7), 2.0
    p = F.softmax(t / temp, -1)
    expected = (p * (p.log() - F.log_softmax(s / temp, -1))).sum(-1).mean() * temp**2
    assert float(kd_divergence(s, t, temp)) == pytest.approx(float(expected), rel=1e-5)
    assert float(kd_divergence(s, t, temp)) > 0


def test_kd_gradient_pulls_student_to_teacher():
    student = torch.zeros(4, 3, requires_grad=True)
    teacher = torch.tensor([[5.0, 0.0, 0.0]]).repeat(4, 1)
    distillation_loss(student, teacher).backward()
    assert (student.grad[:, 0] < 0).all()  # descending raises the teacher's top class


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(ValueError):
        DistillConfig(temprature=2.0)
    with pytest.raises(ValueError):
        DistillConfig(alpha=1.5)
