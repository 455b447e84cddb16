"""Sparsity callbacks on a tiny CNN with synthetic data: masks, schedules, scores."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from netslim.errors import ConfigError
from netslim.training import (
    GMPConfig,
    MovementConfig,
    NMConfig,
    RigLConfig,
    cubic_sparsity,
    make_callback,
)


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4),
    )


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        yield torch.randn(16, 4, 6, 6, generator=g), torch.randint(0, 4, (16,), generator=g)


def train(model, callback, steps, lr=1e-2, after_step=None):
    """The plain loop of the docs, with Adam so momentum tries to move pruned weights."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    callback.on_train_begin()
    for step, (x, y) in enumerate(batches(steps)):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        callback.on_step_end(step)
        if after_step is not None:
            after_step(step)
    return callback.on_train_end()


def weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_gmp_follows_the_schedule_and_masks_persist_through_adam_steps():
    model = tiny_cnn()
    cfg = GMPConfig(final_sparsity=0.75, begin_step=2, end_step=20, frequency=3)
    cb = make_callback(model, cfg)
    seen = []

    def check(step):
        for name, w in weights(model).items():
            assert (w[~cb.masks[name]] == 0).all(), f"pruned weights of {name} moved at step {step}"
        target = cubic_sparsity(step, initial=0.0, final=0.75, begin_step=2, end_step=20, frequency=3)
        for name, mask in cb.masks.items():
            assert int((~mask).sum()) == int(mask.numel() * target)
        seen.append(cb.sparsity())

    report = train(model, cb, 30, after_step=check)
    assert seen[0] == 0.0 and seen[-1] == pytest.approx(0.75, abs=0.01)
    assert all(b >= a for a, b in zip(seen, seen[1:]))
    for name, w in weights(model).items():
        assert float((w == 0).float().mean()) == pytest.approx(0.75, abs=0.02)
        assert report["layers"][name] == pytest.approx(0.75, abs=0.02)


def test_pruned_weights_get_zero_gradient_and_masks_only_shrink():
    model = tiny_cnn()
    cb = make_callback(model, GMPConfig(final_sparsity=0.5, end_step=6, frequency=2))
    previous = {}

    def check(step):
        x, y = next(batches(1))
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for name, w in weights(model).items():
            assert (w.grad[~cb.masks[name]] == 0).all()
            if name in previous:
                assert not (cb.masks[name] & ~previous[name]).any(), "GMP regrew a weight"
            previous[name] = cb.masks[name].clone()

    train(model, cb, 10, after_step=check)


def test_row_compare_prunes_each_output_channel_equally():
    model = tiny_cnn()
    cb = make_callback(model, GMPConfig(final_sparsity=0.5, end_step=4, frequency=1, compare="row"))
    train(model, cb, 5)
    conv = model[2].weight  # (16, 8, 3, 3): 72 weights per output channel
    assert ((conv == 0).flatten(1).sum(1) == 36).all()


def test_nm_masks_stay_valid_and_fixed_after_fine_tuning():
    model = tiny_cnn()
    cb = make_callback(model, NMConfig(pattern="2:4", ignore=("6",)))  # the first Linear stays dense
    start = {}

    def check(step):
        for name, mask in cb.masks.items():
            start.setdefault(name, mask.clone())
            assert torch.equal(mask, start[name])

    train(model, cb, 15, after_step=check)
    conv = model[2].weight.detach()  # groups of 4 consecutive input channels per kernel position
    groups = conv.permute(0, 2, 3, 1).reshape(16, 3, 3, 2, 4)
    assert ((groups != 0).sum(-1) <= 2).all()
    assert ((groups != 0).sum(-1) == 2).float().mean() > 0.95  # the kept weights are really trained
    last = model[8].weight.detach().reshape(4, 2, 4)
    assert ((last != 0).sum(-1) <= 2).all()
    assert (model[6].weight != 0).all()


def test_nm_names_the_layer_that_cannot_take_the_pattern():
    model = tiny_cnn()
    model[0] = nn.Conv2d(3, 8, 3, padding=1)
    with pytest.raises(ConfigError, match="0: 3 input channels"):
        make_callback(model, NMConfig(pattern="2:4")).on_train_begin()


def test_rigl_keeps_sparsity_constant_while_changing_the_mask():
    model = tiny_cnn()
    cb = make_callback(model, RigLConfig(final_sparsity=0.6, begin_step=0, end_step=20, frequency=4, drop_fraction=0.4))
    history = []

    def record(step):
        history.append({n: m.clone() for n, m in cb.masks.items()})

    train(model, cb, 24, after_step=record)
    first = history[0]
    for masks in history:
        for name, mask in masks.items():
            assert int((~mask).sum()) == int(mask.numel() * 0.6)
    changed = sum(int((history[-1][n] != first[n]).sum()) for n in first)
    assert changed > 0
    assert all(torch.equal(history[k][n], history[-1][n]) for k in range(21, 24) for n in first)  # frozen after end


def test_granet_grows_sparsity_on_schedule_and_swaps():
    model = tiny_cnn()
    cfg = RigLConfig(initial_sparsity=0.2, final_sparsity=0.7, end_step=12, frequency=3)
    cb = make_callback(model, cfg)
    train(model, cb, 15)
    for mask in cb.masks.values():
        assert int((~mask).sum()) == int(mask.numel() * 0.7)


def test_movement_scores_follow_minus_w_times_grad_and_choose_the_mask():
    model = tiny_cnn()
    cb = make_callback(model, MovementConfig(final_sparsity=0.5, begin_step=4, end_step=5, frequency=1))
    expected = {n: torch.zeros_like(w) for n, w in weights(model).items()}

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    cb.on_train_begin()
    for step, (x, y) in enumerate(batches(5)):  # steps 0..4: before pruning, masks are dense
        before = {n: w.detach().clone() for n, w in weights(model).items()}
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n, w in weights(model).items():
            expected[n] -= before[n] * w.grad
        opt.step()
        cb.on_step_end(step)
    for n in expected:
        torch.testing.assert_close(cb.movement[n], expected[n])
    by_magnitude = {n: cb.keep_mask(n, w.detach().abs(), 0.5) for n, w in weights(model).items()}
    cb.on_step_end(5)  # the pruning step: keep the half with the largest movement
    for n, mask in cb.masks.items():
        assert expected[n][mask].min() >= expected[n][~mask].max()
        assert not torch.equal(mask, by_magnitude[n])
    cb.on_train_end()


def test_configs_reject_typos_and_bad_schedules():
    with pytest.raises(ValueError):
        GMPConfig(final_sparsty=0.5)
    with pytest.raises(ValueError, match="end_step"):
        GMPConfig(begin_step=10, end_step=10)
    with pytest.raises(ValueError, match="initial_sparsity"):
        GMPConfig(initial_sparsity=0.9, final_sparsity=0.5)
    with pytest.raises(ValueError):
        NMConfig(pattern="unstructured")
    assert RigLConfig(final_sparsity=0.7).initial_sparsity == 0.7
    with pytest.raises(ConfigError, match="select no"):
        make_callback(tiny_cnn(), GMPConfig(targets=("encoder.*",)))
