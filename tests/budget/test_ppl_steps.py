"""The ppl budget's candidate steps on a synthetic front: they close in on the goal from both sides."""

import math

import pytest

import netslim.budget.run as run
from netslim.budget.proxies import Proxies

LAYERS = 24


def _front(power: float):
    """Layers with a coarse option "a" (1 byte, error e), a fine one "b" (2 bytes, e / 4) and
    keep (4 bytes); the measured loss rise is ``(sum of errors) ** power``: for power > 1 a
    secant through the origin keeps underestimating the loss near the goal."""
    errors = {f"l{i}": {"a": 0.01 * (1 + i % 5), "b": 0.0025 * (1 + i % 5)} for i in range(LAYERS)}
    proxies = Proxies(errors, {name: 0 for name in errors})
    sizes = {name: {"a": 1, "b": 2, "keep": 4} for name in errors}

    def measure(choice, kind, label):
        rise = sum(errors[n][o] for n, o in choice.items() if o != "keep") ** power
        return {"label": label, "kind": kind, "bytes": sum(sizes[n][o] for n, o in choice.items()),
                "loss_rise": rise, "ppl_ratio": math.exp(rise), "_choice": choice}

    return proxies, sizes, measure


@pytest.mark.parametrize("power", [1.6, 0.7])
def test_the_candidates_bracket_the_goal_and_end_near_it(power):
    proxies, sizes, measure = _front(power)
    goal = 0.2 ** power
    start = [measure({n: "keep" for n in sizes}, "baseline", "dense"),
             measure({n: "a" for n in sizes}, "baseline", "all a")]  # within the goal, and over it
    assert start[0]["loss_rise"] <= goal < start[1]["loss_rise"]
    target = run.Budget("ppl", math.exp(goal), "ppl")
    points = run._ppl_candidates(target, sizes, proxies, {}, measure, start, deadline=None)
    within = [p for p in points if p["loss_rise"] <= goal]
    assert within and any(p["loss_rise"] > goal for p in points)
    best = min(within, key=lambda p: p["bytes"])
    # the smallest measured model within the goal uses most of it
    assert best["loss_rise"] >= 0.85 * goal


def test_the_next_budget_stays_inside_the_bracket():
    proxies, sizes, measure = _front(1.0)
    loss = run._loss(proxies, {})
    low = measure({n: ("a" if i < 4 else "keep") for i, n in enumerate(sizes)}, "candidate", "low")
    high = measure({n: "a" for n in sizes}, "candidate", "high")
    lo, hi = run._estimate(loss, low["_choice"]), run._estimate(loss, high["_choice"])
    for goal in (low["loss_rise"] * 1.0001, high["loss_rise"] * 0.9999, (low["loss_rise"] + high["loss_rise"]) / 2):
        budget = run._error_budget([low, high], goal, loss)
        assert lo + 0.25 * (hi - lo) - 1e-12 <= budget <= lo + 0.75 * (hi - lo) + 1e-12
