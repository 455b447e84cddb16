"""Custom module kinds: how compressed modules (quantized, factorized, resized) are rebuilt.

A compressed model may hold modules that ``transformers`` cannot construct from its config
(a quantized Linear, a factorized Linear, a Linear with fewer rows). Each such class is
registered under a kind name and implements two methods:

    def export_spec(self) -> dict          # JSON-able constructor arguments
    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module   # an empty module of the right shapes

A kind whose class sets ``rebuilds_children = False`` builds plain children only; the
compressed modules inside it are listed (and rebuilt, after it) on their own. A kind that
wraps a module the config can build (a decoder block with extra parameters) may instead
define ``classmethod wrap(cls, built: nn.Module, spec: dict) -> nn.Module``, which receives
the freshly built module in place of ``from_spec``'s empty one.

:func:`module_specs` lists them when saving (stored in ``netslim.json``), and
:func:`rebuild_modules` replaces the freshly built model's modules before the saved state
dict is loaded. Plain ``nn.Linear`` modules whose shape differs from what the config builds
(structured pruning) use the built-in ``linear`` kind.

Every kind is listed in :data:`KIND_MODULES` with the module that defines it, which is
imported on the first lookup of the kind: a fresh process that only imports ``netslim``
loads any folder, and registering a kind missing from the table fails at import.
"""

from __future__ import annotations

import importlib
from typing import Protocol

from torch import nn

from netslim.errors import NetslimError


class RebuildableModule(Protocol):
    """What a registered module class provides."""

    def export_spec(self) -> dict: ...

    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module: ...


# Kind -> the module defining its class (imported on demand by :func:`module_kind`).
KIND_MODULES = {
    "quantized": "netslim.nn.quantized",
    "factorized_linear": "netslim.nn.lowrank",
    "lowrank_compensated": "netslim.nn.lowrank",
    "unscaled_rmsnorm": "netslim.models.sliced",
    "embedding": "netslim.models.sliced",
    "sliced_decoder_layer": "netslim.models.sliced",
    "routed_experts": "netslim.models.experts",
}
_KINDS: dict[str, type] = {}


def register_module_kind(kind: str):
    """Class decorator registering a rebuildable module class under ``kind``.

    Raises:
        NetslimError: if ``kind`` is not listed in :data:`KIND_MODULES` with the class's
            module (netslim.load would not find it), or is taken by another class.
    """

    def decorator(cls: type) -> type:
        if KIND_MODULES.get(kind) != cls.__module__:
            raise NetslimError(f"module kind '{kind}' of {cls.__module__} must be listed in "
                               "netslim.export.modules.KIND_MODULES so that netslim.load finds it")
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise NetslimError(f"module kind '{kind}' is already registered")
        _KINDS[kind] = cls
        cls.netslim_kind = kind
        return cls

    return decorator


def module_kind(kind: str) -> type | None:
    """The class registered under ``kind``, importing its module first; ``None`` if unknown."""
    if kind not in _KINDS and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    return _KINDS.get(kind)


def _linear_spec(module: nn.Linear) -> dict:
    return {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}


def module_spec(module: nn.Module) -> dict:
    """``{"kind": ..., **spec}`` of a registered module or a plain ``nn.Linear`` (for wrappers
    that must store the spec of the module they wrap)."""
    kind = getattr(type(module), "netslim_kind", None)
    if kind is not None:
        return {"kind": kind, **module.export_spec()}
    if isinstance(module, nn.Linear):
        return {"kind": "linear", **_linear_spec(module)}
    raise NetslimError(f"{type(module).__name__} is not a registered module kind and cannot be saved")


def build_module(spec: dict) -> nn.Module:
    """An empty module of the kind and shapes in ``spec`` (the inverse of :func:`module_spec`).

    Raises:
        NetslimError: if the kind is unknown (the folder needs a newer netslim).
    """
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
    cls = module_kind(kind)
    if cls is not None:
        return cls.from_spec(spec)
    raise NetslimError(f"module kind '{kind}' is unknown to this netslim; upgrade netslim")


def module_specs(model: nn.Module, reference: nn.Module | None = None) -> dict[str, dict]:
    """Name -> ``{"kind": ..., **spec}`` for every module that needs rebuilding.

    Args:
        model: The compressed model.
        reference: A model freshly built from the config, to detect resized ``nn.Linear``
            modules; ``None`` skips that check.
    """
    specs: dict[str, dict] = {}
    ref_modules = dict(reference.named_modules()) if reference is not None else {}
    for name, module in model.named_modules():
        kind = getattr(type(module), "netslim_kind", None)
        if any(name.startswith(f"{outer}.") for outer, s in specs.items() if _rebuilds_children(s)):
            continue  # inside a registered module, which rebuilds its own children
        if kind is not None:
            specs[name] = module_spec(module)
        elif isinstance(module, nn.Linear) and name in ref_modules:
            ref = ref_modules[name]
            if isinstance(ref, nn.Linear) and _linear_spec(ref) != _linear_spec(module):
                specs[name] = {"kind": "linear", **_linear_spec(module)}
        elif record := _attrs_record(module, ref_modules.get(name)):
            specs[name] = record
    return specs


def _rebuilds_children(spec: dict) -> bool:
    """Whether the module of ``spec`` rebuilds its compressed children itself (a kind whose class
    sets ``rebuilds_children = False``, such as routed experts, has them listed on their own)."""
    return spec["kind"] != "attrs" and getattr(module_kind(spec["kind"]), "rebuilds_children", True)


def _attrs_record(module: nn.Module, ref: nn.Module | None) -> dict | None:
    """``{"kind": "attrs", ...}`` when a module's ``netslim_attrs`` (e.g. per-layer head counts
    set by structured pruning) differ from what the config builds."""
    attrs = getattr(module, "netslim_attrs", None)
    if not attrs or ref is None or all(getattr(ref, k, None) == v for k, v in attrs.items()):
        return None
    return {"kind": "attrs", "attrs": dict(attrs)}


def rebuild_modules(model: nn.Module, specs: dict[str, dict]) -> None:
    """Replace the modules named in ``specs`` by empty modules of the saved kinds and shapes.

    Raises:
        NetslimError: if a kind is unknown (the folder needs a newer netslim).
    """
    for name, spec in specs.items():
        if spec["kind"] == "attrs":  # plain attributes on the module the config built
            for key, value in spec["attrs"].items():
                setattr(model.get_submodule(name), key, value)
            continue
        wrap = getattr(module_kind(spec["kind"]), "wrap", None)
        # A wrapper kind (e.g. a sliced decoder block) adopts the module the config built.
        new = wrap(model.get_submodule(name), spec) if wrap else build_module(spec)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
