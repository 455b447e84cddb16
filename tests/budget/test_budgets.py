"""Budgets as users write them, and the one-line errors for the rest."""

import pytest

from netslim.budget.budgets import parse_budget
from netslim.errors import ConfigError


@pytest.mark.parametrize("text, kind, value", [
    ("size=60MB", "size", 60e6),
    ("size = 1.5 GB", "size", 1.5e9),
    ("size=512KiB", "size", 512 * 1024),
    ("size=123456B", "size", 123456),
    ("ppl=1.25x", "ppl", 1.25),
    ("PPL=1.1", "ppl", 1.1),
    ("speedup=1.5x", "speedup", 1.5),
])
def test_budgets_parse(text, kind, value):
    budget = parse_budget(text)
    assert (budget.kind, budget.value, budget.text) == (kind, value, text)


@pytest.mark.parametrize("text, message", [
    ("60MB", "write size=60MB"),
    ("bytes=60MB", "write size=60MB"),
    ("size=60", "a size is a number with B"),
    ("size=60 parsecs", "a size is a number with B"),
    ("ppl=fast", "a ppl budget is a ratio"),
    ("ppl=0.9x", "the ratio must be >= 1"),
])
def test_bad_budgets_say_what_to_write(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_budget(text)
