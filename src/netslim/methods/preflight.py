"""Checks of a recipe against a model's structure, run before any weight is read or measured.

:func:`model_shape` reads what the checks need from a model, or from its ``config.json`` alone
(the model is built on the meta device, so nothing is loaded); :func:`check_recipe` walks the
stages in order, each checking and updating that shape (:meth:`MethodConfig.preflight`), so
a chain that cannot run (pruning after quantization, an ``ignore`` pattern that matches no
layer, a pattern the layer widths do not divide, more blocks removed than the model has) is
refused in one line before minutes of work, not after.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn

from netslim.errors import ConfigError
from netslim.methods.base import FLOAT, LayerShape, MethodConfig, ModelShape
from netslim.models.adapter import ModelAdapter, linear_weight
from netslim.models.registry import family_for_model_type


def _kind(module: nn.Module) -> str:
    return getattr(type(module), "netslim_kind", None) or FLOAT


def _features(module: nn.Module) -> tuple[int | None, int | None]:
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.out_features, module.in_features
    try:
        out_features, in_features = linear_weight(module).shape
        return out_features, in_features
    except (AttributeError, ValueError):
        return None, None


def model_shape(adapter: ModelAdapter, saved_modules: dict[str, dict] | None = None) -> ModelShape:
    """The structure of the adapter's model.

    Args:
        saved_modules: For a model built from a netslim folder's config on the meta device:
            the ``modules`` of its ``netslim.json`` (what the folder's layers really are).
    """
    saved_modules = saved_modules or {}
    layers = {}
    for index in range(adapter.num_blocks):
        for name, module in adapter.block_linears(index).items():
            out_features, in_features = _features(module)
            spec = saved_modules.get(name, {})
            kind = spec.get("kind", _kind(module))
            layers[name] = LayerShape(FLOAT if kind == "linear" else kind, spec.get("in_features", in_features),
                                      spec.get("out_features", out_features))
    kinds = {_kind(m) for m in adapter.model.modules()} | {s.get("kind") for s in saved_modules.values()}
    return ModelShape(adapter.spec.name, adapter.num_blocks, layers, adapter, {k for k in kinds if k and k != FLOAT})


def check_recipe(stages: Sequence[MethodConfig], shape: ModelShape) -> None:
    """Refuse, in one line, a recipe that cannot run on a model of this shape.

    Raises:
        ConfigError: naming the stage and what to change.
    """
    where = (lambda i: f"stage {i + 1}: ") if len(stages) > 1 else (lambda i: "")
    for index, cfg in enumerate(stages):
        try:
            for pattern in cfg.ignore:
                if not any(fnmatch.fnmatchcase(name, pattern) for name in shape.layers):
                    example = next(iter(shape.layers), "model.layers.0.mlp.down_proj")
                    raise ConfigError(f"{cfg.method}: ignore pattern '{pattern}' matches no layer of this model "
                                      f"(layer names look like '{example}')")
            cfg.preflight(shape)
        except ConfigError as exc:
            raise ConfigError(where(index) + str(exc)) from None


def max_positions(config) -> int | None:
    """The longest sequence the model's position embeddings allow, if the config says."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_seqlen(config, seqlen: int) -> None:
    """Refuse windows longer than the model's positions (silently wrong on RoPE models,
    an IndexError on learned position embeddings such as GPT-2's and OPT's).

    Raises:
        ConfigError: naming the limit.
    """
    limit = max_positions(config)
    if limit is not None and seqlen > limit:
        raise ConfigError(f"seqlen={seqlen} exceeds the model's {limit} positions; use --seqlen {limit} or less")


def meta_adapter(config) -> ModelAdapter:
    """The adapter of a model built from ``config`` on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  (slow import)

    family_for_model_type(getattr(config, "model_type", None))  # an unsupported family fails here, in one line
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ModelAdapter.from_model(model)
