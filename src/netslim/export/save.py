"""Saving a compression result as a folder that netslim loads, and plain ``transformers`` too
where it can express the model.

Folder layout:
    config.json                      the model's config
    model.safetensors                the weights, in the ``dense`` format
    netslim.safetensors              the weights, in the ``packed`` format
    tokenizer files                  when a tokenizer is known
    recipe.yaml                      the validated recipe, every setting spelled out
    report.json, report.md           when the result carries a report
    report.png                       per-layer sparsity, bits, rank and error (language models)
    netslim.json                     format marker, the modules netslim.load must rebuild and
                                     the storage records of ``netslim.safetensors``

Storage formats (``netslim.json`` ``format``), see docs/second_order.md:
    dense    ``model.safetensors`` as ``save_pretrained`` writes it, in the model's own
             dtype; plain ``AutoModelForCausalLM.from_pretrained`` loads it and computes the
             same logits. A quantized layer is written as the ``nn.Linear`` weight it
             computes with (dequantized); a model with other modules the config cannot build
             (factorized, compensated or sliced layers, resized layers, added biases) cannot
             be written dense.
    packed   ``netslim.safetensors``: each tensor encoded by a codec (bit-packed codes,
             bitmask or N:M sparse values, or as is where no codec gains), so the folder is
             really smaller; :func:`netslim.load` only. Plain ``transformers`` finds no
             weights there and refuses the folder rather than loading random weights.
    modules  written by older netslim versions: ``model.safetensors`` holding modules the
             config cannot build; still read by :func:`netslim.load`.
    slim_plan  a vision or encoder model of the zoo with channels removed by graph pruning:
             ``slim_plan.json`` (the cuts, replayable on the zoo model) and
             ``model.safetensors`` (the pruned weights); :func:`netslim.load` rebuilds it.

``format="auto"`` (the default) writes ``dense`` for a model that plain ``transformers`` builds
from its config (pruned weights, uniform width or depth pruning) and ``packed`` for any
model that needs :func:`netslim.load`; ``format="packed"`` packs always (sparse weights as
bitmask or N:M values: really smaller on disk); ``format="dense"`` never packs.

Value dtype (``dtype``, packed file only): by default (``"auto"``) a model with quantized
layers stores its other 32-bit floating tensors (embeddings, LM head, norms, unquantized
layers) in float16 (bfloat16 for a bfloat16 model), while the quantized layers' codes,
scales, zeros and bias stay exact; every other model is stored exactly. ``dtype=None`` is
exact for every model; ``dtype=torch.float16`` rounds every floating tensor, the quantized
layers' scales included. :func:`round_for_storage` applies the same rounding to a model in
memory, so that a model evaluated after it equals the saved one bit for bit.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from netslim import __version__
from netslim.errors import ConfigError
from netslim.eval.plots import render_plot
from netslim.eval.report import Report, render_markdown
from netslim.eval.size import folder_weight_bytes
from netslim.export.atomic import atomic_folder
from netslim.export.modules import module_specs
from netslim.export.recipe_file import Stage, dump_recipe, recipe_data
from netslim.export.storage import (
    check_codecs, declared_widths, decoder_linears, dense_records, plan_codecs, round_values, storage_summary, unique_state,
    value_dtypes, write_packed,
)
from netslim.graph.plan import SlimPlan, write_pruned
from netslim.models.experts import fuse_state
from netslim.models.folder import NETSLIM_MARKER

SLIM_FORMAT = "slim_plan"

FORMATS = ("auto", "dense", "packed")
EXPERTS_KIND = "routed_experts"  # netslim.models.experts.RoutedExperts, fused again in the dense layout


class SavedResult(Protocol):
    """What :func:`save` reads of a compression result (:class:`netslim.api.CompressionResult`)."""

    model: torch.nn.Module
    tokenizer: Any
    recipe: Sequence[Stage]
    source: str
    report: Report | None
    plan: SlimPlan | None


def reference_model(model):
    """The model the config alone builds, on the meta device (no memory), to spot resized layers."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model.config)


def save(
    result: SavedResult,
    path: str | os.PathLike,
    overwrite: bool = False,
    format: str = "auto",  # noqa: A002  (the user-facing name)
    dtype: torch.dtype | str | None = "auto",
    codecs: dict[str, str] | None = None,
) -> Path:
    """Write ``result`` to folder ``path`` atomically and return the path.

    Args:
        format: ``"packed"`` packs tensors where a codec makes them smaller; ``"dense"``
            writes the plain ``transformers`` layout; ``"auto"`` packs only a model that
            plain ``transformers`` cannot load.
        dtype: Value dtype of floating tensors in a packed file: ``"auto"`` float16 for the
            non-quantized tensors of a model with quantized layers, exact otherwise;
            ``None`` keeps each tensor's own (exact); a floating dtype (``torch.float16``)
            applies to every floating tensor, scales of quantized layers included. The
            dense layout keeps the model's own dtype.
        codecs: Per-tensor overrides for packing, ``fnmatch`` pattern -> codec name.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is false.
        ConfigError: for an unknown format, codec or dtype, or ``format="dense"`` for a
            model that plain ``transformers`` cannot express.
    """
    if not isinstance(getattr(result, "model", None), torch.nn.Module):
        raise ConfigError(f"save takes the result of netslim.compress, got {type(result).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"save takes a folder path, got {type(path).__name__}")
    check_codecs(codecs)
    if getattr(result, "plan", None) is not None:
        return _save_slim_plan(result, path, overwrite, format)
    model = result.model
    modules, packed, dtypes = _layout(model, format, dtype)
    state, aliases = unique_state(model.state_dict())
    plan = plan_codecs(state, dtypes, codecs, declared_widths(model)) if packed else {}
    with atomic_folder(path, overwrite, inputs=[result.source]) as tmp:
        if packed:
            storage = _write_packed_model(model, state, aliases, plan, dtypes, tmp)
        else:
            plain = _plain_state(model, modules)
            storage = {"summary": storage_summary(dense_records(unique_state(plain)[0]), decoder_linears(model))}
            model.save_pretrained(tmp, safe_serialization=True, state_dict=_fuse_experts(plain, modules))
        finish_folder(tmp, result, "packed" if packed else "dense", modules if packed else {}, storage)
    return Path(path)


def finish_folder(tmp: Path, result: SavedResult, fmt: str, modules: dict, storage: dict) -> None:
    """Everything of an LM output folder but its weights: tokenizer, recipe.yaml, netslim.json
    (``fmt``: "dense", plain transformers loads it; "packed" needs netslim.load) and the report."""
    if result.tokenizer is not None:
        result.tokenizer.save_pretrained(tmp)
    (tmp / "recipe.yaml").write_text(dump_recipe(result.recipe), encoding="utf-8")
    marker = {"netslim_version": __version__, "format": fmt, "modules": modules, "storage": storage,
              "source": result.source, "recipe": recipe_data(result.recipe)}
    (tmp / NETSLIM_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    if result.report is not None:
        _write_report(result.report, storage["summary"], folder_weight_bytes(tmp), tmp)


def _save_slim_plan(result: SavedResult, path: str | os.PathLike, overwrite: bool, format: str) -> Path:  # noqa: A002
    """The ``slim_plan`` layout of a graph-pruned zoo model (its weights are plain tensors)."""
    if format == "packed":
        raise ConfigError("a graph-pruned model is stored as its plan and dense weights; use format auto or dense")
    with atomic_folder(path, overwrite, inputs=[result.source]) as tmp:
        write_pruned(tmp, result.model, result.plan)
        if result.tokenizer is not None:
            result.tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(dump_recipe(result.recipe), encoding="utf-8")
        marker = {"netslim_version": __version__, "format": SLIM_FORMAT, "source": result.source,
                  "recipe": recipe_data(result.recipe)}
        (tmp / NETSLIM_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        if result.report is not None:
            _write_report(result.report, None, folder_weight_bytes(tmp), tmp)
    return Path(path)


def round_for_storage(
    model: torch.nn.Module,
    dtype: torch.dtype | str | None = "auto",
    format: str = "auto",  # noqa: A002  (the name save uses)
) -> None:
    """Round ``model``'s floating values in place to those ``save(..., format=format,
    dtype=dtype)`` stores (cast to the value dtype and back), so that the saved folder then
    reproduces the model bit for bit; a model saved in the dense layout is left unchanged.

    Raises:
        ConfigError: as :func:`save` does for the same ``format`` and ``dtype``.
    """
    _, packed, dtypes = _layout(model, format, dtype)
    if packed:
        round_values(model, dtypes)


def _layout(model, format: str, dtype) -> tuple[dict[str, dict], bool, dict]:  # noqa: A002
    """``(module specs, whether the packed file is written, value dtype per tensor)``.

    Raises:
        ConfigError: for an unknown format or dtype, or a dense model plain transformers
            cannot express.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown storage format '{format}'; use one of {', '.join(FORMATS)}")
    dtypes = value_dtypes(model, dtype)
    reference = reference_model(model)
    modules = module_specs(model, reference)
    if format == "dense":
        built = dict(reference.named_modules())
        experts = [f"{name}." for name, spec in modules.items() if spec["kind"] == EXPERTS_KIND]
        for name, spec in modules.items():
            if spec["kind"] == EXPERTS_KIND or (name.startswith(tuple(experts)) and spec["kind"] == "quantized"):
                continue  # written back fused; an expert's projections keep their shapes
            if not _is_plain_linear(spec, built.get(name)):
                raise ConfigError(f"format 'dense' (plain transformers) cannot express the '{spec['kind']}' module "
                                  f"'{name}' of this model; use format auto or packed")
    needs_netslim = any(spec["kind"] != EXPERTS_KIND for spec in modules.values())
    return modules, format == "packed" or (format == "auto" and needs_netslim), dtypes


def _is_plain_linear(spec: dict, built: torch.nn.Module | None) -> bool:
    """Whether ``spec`` is a quantized layer of the ``nn.Linear`` shape and bias the config builds."""
    return (spec["kind"] == "quantized" and isinstance(built, torch.nn.Linear)
            and (built.in_features, built.out_features, built.bias is not None)
            == (spec["in_features"], spec["out_features"], spec["bias"]))


def _plain_state(model, modules: dict[str, dict]) -> dict[str, torch.Tensor]:
    """The state dict with each quantized layer of ``modules`` as the ``nn.Linear`` weight and
    bias it computes with, in the model's dtype."""
    state = model.state_dict()
    for name, spec in modules.items():
        if spec["kind"] == EXPERTS_KIND:
            continue
        layer = model.get_submodule(name)
        for key in layer.state_dict():
            del state[f"{name}.{key}"]
        state[f"{name}.weight"] = layer.dequantize(model.dtype)
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.to(model.dtype)
    return state


def _fuse_experts(state: dict[str, torch.Tensor], modules: dict[str, dict]) -> dict[str, torch.Tensor]:
    """``state`` with the routed experts of ``modules`` fused again as ``transformers`` builds them."""
    for name, spec in modules.items():
        if spec["kind"] == EXPERTS_KIND:
            fuse_state(state, name, spec["num_experts"])
    return state


def _write_packed_model(model, state, aliases, plan, dtypes, folder: Path) -> dict:
    """Config files plus ``netslim.safetensors``; the ``storage`` entry of ``netslim.json``."""
    write_configs(model, folder)
    records = write_packed(state, plan, dtypes, folder, declared_widths(model))
    return packed_storage(model, records, aliases, dtypes)


def write_configs(model, folder: Path) -> None:
    """``config.json`` and, for a model that generates, ``generation_config.json``."""
    model.config.save_pretrained(folder)
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.save_pretrained(folder)


def packed_storage(model, records: dict, aliases: dict, dtypes: dict) -> dict:
    """The ``storage`` entry of a packed folder's ``netslim.json``."""
    value_dtype = next((str(d).removeprefix("torch.") for d in dtypes.values() if d is not None), "own")
    return {
        "value_dtype": value_dtype,  # of the tensors not in quantized layers that it does not overflow
        "tensors": records,
        "aliases": aliases,
        "summary": storage_summary(records, decoder_linears(model)),
    }


def _write_report(report: Report, summary: dict | None, weight_bytes: int, folder: Path) -> None:
    """Record the real on-disk size of the weights in the report, then write it."""
    report.compressed.size_bytes = weight_bytes
    report.storage = summary
    (folder / "report.json").write_text(json.dumps(report.as_dict(), indent=2), encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    if report.kind != "channels":
        methods = " + ".join(str(stage.get("method")) for stage in report.recipe)
        render_plot(report.layers, folder / "report.png", f"{report.model}: {methods}")
