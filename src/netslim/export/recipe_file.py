"""The recipe as written into an output folder: plain data (``netslim.json``) and ``recipe.yaml``.

Only what a validated stage config offers is used (pydantic's ``model_dump``), so writing a
recipe needs neither :mod:`netslim.recipe` nor the methods: export sits below them.
:func:`netslim.recipe.load_recipe` reads ``recipe.yaml`` back to equal configs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import yaml


class Stage(Protocol):
    """A validated stage config (:class:`netslim.methods.base.MethodConfig`)."""

    def model_dump(self, *, mode: str = ...) -> dict[str, Any]: ...


def recipe_data(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    """Plain data of a validated recipe, every setting spelled out."""
    return [stage.model_dump(mode="json") for stage in stages]


def dump_recipe(stages: Sequence[Stage]) -> str:
    """The recipe as YAML that :func:`netslim.recipe.load_recipe` reads back to equal configs."""
    return yaml.safe_dump(recipe_data(stages), sort_keys=False)
