"""The allocation solver returns the known optimum and honours budgets to the byte."""

from __future__ import annotations

import itertools
import random

import pytest

from netslim.errors import ConfigError
from netslim.budget.allocate import Option, allocate, front


def _table(seed: int, layers: int = 4, options: int = 3) -> dict[str, list[Option]]:
    rng = random.Random(seed)
    return {f"layer{i}": [Option(f"o{j}", rng.randint(10, 1000), rng.uniform(0, 10), rng.uniform(0, 1))
                          for j in range(options)] for i in range(layers)}


def _brute(table, minimize, **budgets):
    """The optimum by trying every combination."""
    best = None
    for combo in itertools.product(*table.values()):
        totals = {"bytes": sum(o.bytes for o in combo), "error": sum(o.error for o in combo),
                  "latency": sum(o.latency for o in combo)}
        if any(totals[k.removeprefix("max_")] > v for k, v in budgets.items()):
            continue
        if best is None or totals[minimize] < best[0]:
            best = (totals[minimize], {name: o.label for name, o in zip(table, combo)})
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("minimize, budgets", [
    ("error", {"max_bytes": 1500}),
    ("bytes", {"max_error": 18.0}),
    ("error", {"max_bytes": 2000, "max_latency": 1.6}),
    ("latency", {"max_bytes": 1800, "max_error": 25.0}),
])
def test_the_solver_finds_the_brute_force_optimum(seed, minimize, budgets):
    table = _table(seed)
    expected = _brute(table, minimize, **budgets)
    if expected is None:
        with pytest.raises(ConfigError):
            allocate(table, minimize=minimize, **budgets)
        return
    got = allocate(table, minimize=minimize, **budgets)
    assert got.total(minimize) == pytest.approx(expected[0])
    chosen = [next(o for o in table[name] if o.label == label) for name, label in got.choice.items()]
    assert got.bytes == sum(o.bytes for o in chosen)
    assert all(got.total(k.removeprefix("max_")) <= v + 1e-9 for k, v in budgets.items())


def test_a_size_budget_is_met_to_the_byte():
    # byte counts of real layers: the tightest budget that admits the better option must pick it
    table = {f"l{i}": [Option("q4", 1_179_648 + i, 2.0), Option("q8", 2_359_296 + 7 * i, 0.5)] for i in range(30)}
    exact = sum(o.bytes for o in (table[f"l{i}"][1 if i < 11 else 0] for i in range(30)))
    got = allocate(table, max_bytes=exact)
    assert got.bytes <= exact and sum(label == "q8" for label in got.choice.values()) == 11
    fewer = allocate(table, max_bytes=exact - 1)
    assert fewer.bytes <= exact - 1 and sum(label == "q8" for label in fewer.choice.values()) == 10


def test_the_front_is_monotone_and_each_point_optimal():
    table = _table(3, layers=5)
    points = front(table, points=12)
    assert len(points) >= 3
    assert all(a.bytes <= b.bytes and a.error > b.error for a, b in zip(points, points[1:]))
    for point in points:
        assert point.error == pytest.approx(_brute(table, "error", max_bytes=point.bytes)[0])


def test_impossible_budgets_say_what_to_change():
    table = _table(0)
    floor = sum(min(o.bytes for o in options) for options in table.values())
    with pytest.raises(ConfigError, match=f"below the smallest total the options allow \\({floor}\\)"):
        allocate(table, max_bytes=floor - 1)
    with pytest.raises(ConfigError, match="cannot minimize 'size'"):
        allocate(table, minimize="size")
    with pytest.raises(ConfigError, match="no options"):
        allocate({"a": []}, max_bytes=1)
