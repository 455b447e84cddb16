"""Saving a compression result as a folder that ``transformers`` and netslim both load.

Folder layout:
    config.json, model.safetensors   the model (``AutoModelForCausalLM.from_pretrained`` works)
    tokenizer files                  when a tokenizer is known
    recipe.yaml                      the validated recipe, every setting spelled out
    report.json, report.md           when the result carries a report
    netslim.json                     format marker and the modules netslim.load must rebuild

Storage formats (``netslim.json`` ``format``), see docs/second_order.md:
    dense    ``model.safetensors`` as ``save_pretrained`` writes it; plain
             ``AutoModelForCausalLM.from_pretrained`` loads it.
    modules  the same file, but compression left modules the config cannot build (quantized,
             factorized, resized layers), so :func:`netslim.load` is needed.
    packed   ``netslim.safetensors``: each tensor encoded by a codec (bit-packed codes,
             bitmask or N:M sparse values) so the folder is really smaller; netslim.load only.

``format="auto"`` (the default) keeps a model that plain ``transformers`` can build (pruned
weights) in the ``dense`` layout, and packs a model that needs :func:`netslim.load` anyway
(quantized or factorized layers) when a codec makes some tensor smaller;
``format="packed"`` packs always (sparse weights as bitmask or N:M values: really smaller on
disk); ``format="dense"`` never packs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from netslim import __version__
from netslim.errors import ConfigError
from netslim.eval.report import render_markdown
from netslim.eval.size import folder_weight_bytes
from netslim.export.atomic import atomic_folder
from netslim.export.modules import module_specs
from netslim.export.storage import (
    decoder_linears, dense_records, plan_codecs, storage_summary, unique_state, write_packed,
)
from netslim.models.loading import NETSLIM_MARKER
from netslim.recipe import dump_recipe, recipe_data

if TYPE_CHECKING:
    from netslim.api import CompressionResult

FORMATS = ("auto", "dense", "packed")


def _reference_model(model):
    """The model the config alone builds, on the meta device (no memory), to spot resized layers."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def save(
    result: CompressionResult,
    path: str | os.PathLike,
    overwrite: bool = False,
    format: str = "auto",  # noqa: A002  (the user-facing name)
    dtype: torch.dtype | None = None,
    codecs: dict[str, str] | None = None,
) -> Path:
    """Write ``result`` to folder ``path`` atomically and return the path.

    Args:
        format: ``"packed"`` packs tensors where a codec makes them smaller; ``"dense"``
            writes the plain ``transformers`` layout; ``"auto"`` packs only a model that
            plain ``transformers`` cannot load anyway.
        dtype: Value dtype of floating tensors in a packed file: ``None`` keeps each
            tensor's own (exact); ``torch.float16`` halves float32 weights, rounding them.
            The dense layout keeps the model's own dtype.
        codecs: Per-tensor overrides for packing, ``fnmatch`` pattern -> codec name.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is false.
        ConfigError: for an unknown format or codec.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown storage format '{format}'; use one of {', '.join(FORMATS)}")
    model = result.model
    modules = module_specs(model, _reference_model(model))
    state, aliases = unique_state(model)
    # auto: pack a model that needs netslim.load anyway, and only if a codec gains something
    chosen = "dense" if format == "dense" or (format == "auto" and not modules) else "packed"
    plan = plan_codecs(state, chosen, dtype, codecs)
    packed = format == "packed" or (chosen == "packed" and any(c != "dense" for c in plan.values()))
    with atomic_folder(path, overwrite) as tmp:
        if packed:
            storage = _write_packed_model(model, state, aliases, plan, dtype, tmp)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            storage = {"summary": storage_summary(dense_records(state), decoder_linears(model))}
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(dump_recipe(result.recipe), encoding="utf-8")
        marker = {
            "netslim_version": __version__,
            # "dense": plain transformers can load it; "modules" and "packed" need netslim.load.
            "format": "packed" if packed else "modules" if modules else "dense",
            "modules": modules,
            "storage": storage,
            "source": result.source,
            "recipe": recipe_data(result.recipe),
        }
        (tmp / NETSLIM_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        if result.report is not None:
            _write_report(result.report, storage["summary"], folder_weight_bytes(tmp), tmp)
    return Path(path)


def _write_packed_model(model, state, aliases, plan, dtype, folder: Path) -> dict:
    """Config files plus ``netslim.safetensors``; the ``storage`` entry of ``netslim.json``."""
    model.config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.save_pretrained(folder)
    records = write_packed(state, plan, dtype, folder)
    return {
        "value_dtype": "own" if dtype is None else str(dtype).removeprefix("torch."),
        "tensors": records,
        "aliases": aliases,
        "summary": storage_summary(records, decoder_linears(model)),
    }


def _write_report(report: dict, summary: dict, weight_bytes: int, folder: Path) -> None:
    """Record the real on-disk size of the weights in the report, then write it."""
    if "compressed" in report:
        report["compressed"]["size_bytes"] = weight_bytes
    report["storage"] = summary
    (folder / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
