"""Saving a compression result as a folder that ``transformers`` and netslim both load.

Folder layout:
    config.json, model.safetensors   the model (``AutoModelForCausalLM.from_pretrained`` works)
    tokenizer files                  when a tokenizer is known
    recipe.yaml                      the validated recipe, every setting spelled out
    report.json, report.md           when the result carries a report
    netslim.json                     format marker and the modules netslim.load must rebuild

A folder of format ``dense`` loads with plain ``AutoModelForCausalLM.from_pretrained``. When
compression left modules the config cannot build (quantized, factorized or resized layers),
the format is ``modules`` and :func:`netslim.load` is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from netslim import __version__
from netslim.eval.report import render_markdown
from netslim.export.atomic import atomic_folder
from netslim.export.modules import module_specs
from netslim.models.loading import NETSLIM_MARKER
from netslim.recipe import dump_recipe, recipe_data

if TYPE_CHECKING:
    from netslim.api import CompressionResult



def _reference_model(model):
    """The model the config alone builds, on the meta device (no memory), to spot resized layers."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def save(result: CompressionResult, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``result`` to folder ``path`` atomically and return the path.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is false.
    """
    with atomic_folder(path, overwrite) as tmp:
        result.model.save_pretrained(tmp, safe_serialization=True)
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(dump_recipe(result.recipe), encoding="utf-8")
        modules = module_specs(result.model, _reference_model(result.model))
        marker = {
            "netslim_version": __version__,
            # "dense": plain transformers can load it; "modules": netslim.load rebuilds modules.
            "format": "modules" if modules else "dense",
            "modules": modules,
            "source": result.source,
            "recipe": recipe_data(result.recipe),
        }
        (tmp / NETSLIM_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        if result.report is not None:
            (tmp / "report.json").write_text(json.dumps(result.report, indent=2), encoding="utf-8")
            (tmp / "report.md").write_text(render_markdown(result.report), encoding="utf-8")
    return Path(path)
