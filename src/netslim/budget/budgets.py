"""Budgets as users write them: ``size=60MB``, ``ppl=1.25x``, ``speedup=1.5x``."""

from __future__ import annotations

import re
from dataclasses import dataclass

from netslim.errors import ConfigError

UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
KINDS = ("size", "ppl", "speedup")
_EXAMPLES = "size=60MB, ppl=1.25x or speedup=1.5x"


@dataclass(frozen=True)
class Budget:
    """A parsed budget.

    Attributes:
        kind: ``size`` (stored weight bytes at most ``value``), ``ppl`` (perplexity at most
            ``value`` times the dense one) or ``speedup`` (at least ``value`` times faster).
        value: Bytes for ``size``, a ratio otherwise.
        text: As the user wrote it.
    """

    kind: str
    value: float
    text: str


def parse_budget(text: str) -> Budget:
    """``size=60MB`` (B, KB, MB, GB; KiB, MiB, GiB), ``ppl=1.25x``, ``speedup=1.5x``.

    Raises:
        ConfigError: one line saying what a budget looks like.
    """
    kind, sep, value = str(text).replace(" ", "").partition("=")
    kind = kind.lower()
    if not sep or kind not in KINDS:
        raise ConfigError(f"budget '{text}': write {_EXAMPLES}")
    if kind == "size":
        match = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-zA-Z]*)", value)
        unit = match.group(2).lower() if match else ""
        if match is None or unit not in UNITS:
            raise ConfigError(f"budget '{text}': a size is a number with B, KB, MB, GB (or KiB, MiB, GiB), e.g. size=60MB")
        size = float(match.group(1)) * UNITS[unit]
        if size < 1:
            raise ConfigError(f"budget '{text}': the size must be at least one byte")
        return Budget("size", float(int(size)), text)
    match = re.fullmatch(r"([0-9]*\.?[0-9]+)[xX]?", value)
    if match is None:
        raise ConfigError(f"budget '{text}': a {kind} budget is a ratio, e.g. {kind}=1.25x")
    ratio = float(match.group(1))
    if ratio < 1:
        what = "at least the dense perplexity" if kind == "ppl" else "a speed-up of at least 1"
        raise ConfigError(f"budget '{text}': the ratio must be >= 1 ({what})")
    return Budget(kind, ratio, text)
