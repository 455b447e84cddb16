"""The allocation solver of the budget search: one option per layer, best total under budgets.

Each layer (or block) offers options (a bit width and group size, a sparsity, a rank, ...),
each with its exact byte cost, a proxy error and a latency, all additive over layers. Picking
one option per layer to minimize one total while the others stay within their budgets is a
multiple-choice knapsack; it is solved exactly as a mixed-integer program by HiGHS through
:func:`scipy.optimize.milp` (binary ``x[l, o]``: layer ``l`` takes option ``o``; one option per
layer; one inequality per budget). Byte totals are then checked in integer arithmetic, so a
size budget is honoured to the byte even where the solver's float tolerance would allow a
few bytes over.

Example:
    >>> layers = {"q": [Option("4-bit", 100, 0.5), Option("8-bit", 200, 0.1)], ...}
    >>> allocate(layers, minimize="error", max_bytes=350).choice
    {"q": "8-bit", ...}
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from netslim.errors import ConfigError

METRICS = ("bytes", "error", "latency")


@dataclass(frozen=True)
class Option:
    """One way to compress one layer.

    Attributes:
        label: What it is (e.g. ``gptq b4 g128``), as the recipe will spell it.
        bytes: Its exact storage cost in bytes.
        error: Its proxy error (additive over layers, e.g. a layer-output error).
        latency: Its measured time in seconds (additive over layers).
    """

    label: str
    bytes: int
    error: float
    latency: float = 0.0


@dataclass(frozen=True)
class Allocation:
    """The option every layer takes, and the totals.

    Attributes:
        choice: Layer name -> the label of its option.
        bytes / error / latency: Sums over the layers.
    """

    choice: dict[str, str]
    bytes: int
    error: float
    latency: float

    def total(self, metric: str) -> float:
        return getattr(self, metric)


def allocate(layers: dict[str, list[Option]], *, minimize: str = "error", max_bytes: int | None = None,
             max_error: float | None = None, max_latency: float | None = None) -> Allocation:
    """The allocation with the smallest total ``minimize`` whose other totals meet the budgets.

    Raises:
        ConfigError: a layer without options, an unknown metric, or budgets that no allocation
            meets (naming the smallest total the options allow).
    """
    if minimize not in METRICS:
        raise ConfigError(f"cannot minimize {minimize!r}; use one of {', '.join(METRICS)}")
    if not layers:
        raise ConfigError("nothing to allocate: no layers")
    for name, options in layers.items():
        if not options:
            raise ConfigError(f"layer {name} has no options to choose from")
    budgets = {m: b for m, b in (("bytes", max_bytes), ("error", max_error), ("latency", max_latency))
               if b is not None}
    for metric, budget in budgets.items():
        floor = sum(min(_value(o, metric) for o in options) for options in layers.values())
        if floor > budget:
            raise ConfigError(f"the {metric} budget {budget:g} is below the smallest total the options allow "
                              f"({floor:g}); raise it or offer smaller options")
    names = list(layers)
    flat = [(i, o) for i, name in enumerate(names) for o in layers[name]]
    columns = len(flat)
    one_each = np.zeros((len(names), columns))
    for j, (i, _) in enumerate(flat):
        one_each[i, j] = 1.0
    constraints = [LinearConstraint(one_each, 1.0, 1.0)]
    limit = dict(budgets)
    for _ in range(8):  # a byte total over budget by float tolerance: tighten by the excess and solve again
        rows = [LinearConstraint(np.array([[_value(o, m) for _, o in flat]]), -np.inf, b) for m, b in limit.items()]
        result = milp(np.array([_value(o, minimize) for _, o in flat]), constraints=constraints + rows,
                      integrality=np.ones(columns), bounds=Bounds(0, 1))
        if result.x is None:
            raise ConfigError(f"no allocation meets the budgets {budgets} together; loosen one of them")
        picked = [flat[j] for j in np.flatnonzero(result.x > 0.5)]
        assert len(picked) == len(names), "one option per layer"
        allocation = _allocation(names, picked)
        over = allocation.bytes - budgets["bytes"] if "bytes" in budgets else 0
        if over <= 0:
            return allocation
        limit["bytes"] -= over
    raise ConfigError(f"the solver could not meet the byte budget {budgets['bytes']} exactly")  # pragma: no cover


def front(layers: dict[str, list[Option]], x: str = "bytes", y: str = "error", points: int = 16,
          **budgets) -> list[Allocation]:
    """Allocations along the trade-off of ``x`` against ``y`` (each minimizes ``y`` at its ``x``
    budget), from the smallest ``x`` the options allow to the ``x`` of the best ``y``, without
    dominated or repeated points. Further ``max_*`` budgets apply to every point."""
    cheapest = allocate(layers, minimize=x, **budgets)
    best = allocate(layers, minimize=y, **budgets)
    low, high = cheapest.total(x), best.total(x)
    out: list[Allocation] = []
    for k in range(points):
        budget = low + (high - low) * k / max(1, points - 1)
        budget = math.floor(budget) if x == "bytes" else budget
        point = allocate(layers, minimize=y, **{**budgets, f"max_{x}": max(budget, low)})
        if not out or point.total(y) < out[-1].total(y):
            out.append(point)
    return out


def _value(option: Option, metric: str) -> float:
    return float(getattr(option, metric))


def _allocation(names: list[str], picked: list[tuple[int, Option]]) -> Allocation:
    choice = {names[i]: o.label for i, o in picked}
    return Allocation(choice, sum(o.bytes for _, o in picked), sum(o.error for _, o in picked),
                      sum(o.latency for _, o in picked))
