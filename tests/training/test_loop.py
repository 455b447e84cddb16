"""The reference loop: steps, callback wiring, distillation from a teacher."""

import copy

import pytest
import torch
from torch import nn

from netslim.training import DistillConfig, GMPConfig, make_callback
from netslim.training.loop import accuracy, fit


def separable(n=512):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))


def test_fit_runs_the_callback_and_learns():
    x, y = separable()
    model = mlp()
    cb = make_callback(model, GMPConfig(final_sparsity=0.5, end_step=20, frequency=5, ignore=("2",)))
    out = fit(model, x, y, epochs=2.5, batch_size=32, lr=1e-2, callback=cb)
    assert out["steps"] == 40
    assert out["sparsity"]["layers"] == {"0": pytest.approx(0.5)}
    assert float((model[0].weight == 0).float().mean()) == pytest.approx(0.5)
    assert accuracy(model, x, y) > 0.9


def test_pure_distillation_copies_the_teacher():
    x, y = separable()
    teacher = mlp()
    fit(teacher, x, y, epochs=3, batch_size=32, lr=1e-2)
    student = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    wrong = 1 - y  # with alpha=1 the labels are ignored: the student learns from the teacher alone
    fit(student, x, wrong, epochs=3, batch_size=32, lr=1e-2, teacher=copy.deepcopy(teacher),
        distill=DistillConfig(alpha=1.0, temperature=2.0))
    agree = (student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean()
    assert agree > 0.9
