"""Recipes: an ordered list of method stages, from Python objects, YAML or JSON.

A recipe file holds a list of stages (or a single stage):

.. code-block:: yaml

    - method: wanda
      ratio: 0.5
      pattern: "2:4"

Files and in-memory data have separate entry points, so a string is never guessed to be YAML.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

import netslim.methods  # noqa: F401  (registers the methods)
from netslim.errors import ConfigError, DataNotFoundError
from netslim.export.recipe_file import dump_recipe, recipe_data  # noqa: F401  (part of this module's API)
from netslim.methods.base import MethodConfig
from netslim.methods.registry import build_config

MAX_STAGES = 64  # a longer list is a mistake (a generated file, a loop), not a recipe
RecipeLike = MethodConfig | Mapping[str, Any] | Sequence[MethodConfig | Mapping[str, Any]]


def parse_recipe(recipe: RecipeLike) -> list[MethodConfig]:
    """Validate a config, a stage mapping, or a list of them into config objects.

    Raises:
        ConfigError: naming the stage and the problem.
    """
    if isinstance(recipe, (str, bytes, os.PathLike)):
        raise ConfigError(f"a recipe is a config, a stage mapping or a list of them, not the string {str(recipe)!r}; "
                          "for a file use netslim.load_recipe(path), for one method {'method': 'wanda', ...}")
    if isinstance(recipe, (MethodConfig, Mapping)):
        stages = [recipe]
    elif isinstance(recipe, Sequence):
        stages = list(recipe)
    else:
        raise ConfigError(f"a recipe is a config, a stage mapping or a list of them, got {type(recipe).__name__}")
    if not stages:
        raise ConfigError("the recipe is empty; give at least one stage, e.g. {method: wanda, ratio: 0.5}")
    if len(stages) > MAX_STAGES:
        raise ConfigError(f"the recipe has {len(stages)} stages; netslim runs at most {MAX_STAGES} in one recipe")
    where = (lambda i: f"stage {i + 1}: ") if len(stages) > 1 else (lambda i: "")
    return [build_config(stage, where(i)) for i, stage in enumerate(stages)]


class _DuplicateKey(ValueError):
    """A setting given twice in one stage (YAML and JSON would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice is not None:
        raise _DuplicateKey(f"'{twice}' is given twice in one stage; keep one")
    return dict(pairs)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        _unique_keys([(k, None) for k in keys])
        return super().construct_mapping(node, deep=deep)


def load_recipe(path: str | os.PathLike) -> list[MethodConfig]:
    """Read and validate a ``.yaml``/``.yml``/``.json`` recipe file.

    Raises:
        DataNotFoundError: if the file does not exist.
        ConfigError: if it does not parse or a stage is invalid.
    """
    file = Path(path)
    if not file.is_file():
        raise DataNotFoundError(f"recipe file '{path}' not found")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text, object_pairs_hook=_unique_keys) if file.suffix == ".json" else yaml.load(text, _StrictLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe '{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except (json.JSONDecodeError, yaml.YAMLError, _DuplicateKey) as exc:
        raise ConfigError(f"recipe '{path}' does not parse: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise ConfigError(f"recipe '{path}' is empty")
    if isinstance(data, Mapping) and "stages" in data:
        data = data["stages"]
    if not isinstance(data, (Mapping, list)):
        raise ConfigError(f"recipe '{path}' must hold a list of stages such as '- method: wanda', "
                          f"not a {type(data).__name__}")
    return parse_recipe(data)
