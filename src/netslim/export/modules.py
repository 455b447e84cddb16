"""Custom module kinds: how compressed modules (quantized, factorized, resized) are rebuilt.

A compressed model may hold modules that ``transformers`` cannot construct from its config
(a quantized Linear, a factorized Linear, a Linear with fewer rows). Each such class is
registered under a kind name and implements two methods:

    def export_spec(self) -> dict          # JSON-able constructor arguments
    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module   # an empty module of the right shapes

:func:`module_specs` lists them when saving (stored in ``netslim.json``), and
:func:`rebuild_modules` replaces the freshly built model's modules before the saved state
dict is loaded. Plain ``nn.Linear`` modules whose shape differs from what the config builds
(structured pruning) use the built-in ``linear`` kind.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn

from netslim.errors import NetslimError


class RebuildableModule(Protocol):
    """What a registered module class provides."""

    def export_spec(self) -> dict: ...

    @classmethod
    def from_spec(cls, spec: dict) -> nn.Module: ...


_KINDS: dict[str, type] = {}


def register_module_kind(kind: str):
    """Class decorator registering a rebuildable module class under ``kind``."""

    def decorator(cls: type) -> type:
        if kind in _KINDS and _KINDS[kind] is not cls:
            raise NetslimError(f"module kind '{kind}' is already registered")
        _KINDS[kind] = cls
        cls.netslim_kind = kind
        return cls

    return decorator


def _linear_spec(module: nn.Linear) -> dict:
    return {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}


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
        if kind is not None:
            specs[name] = {"kind": kind, **module.export_spec()}
        elif isinstance(module, nn.Linear) and name in ref_modules:
            ref = ref_modules[name]
            if isinstance(ref, nn.Linear) and ref.weight.shape != module.weight.shape:
                specs[name] = {"kind": "linear", **_linear_spec(module)}
    return specs


def rebuild_modules(model: nn.Module, specs: dict[str, dict]) -> None:
    """Replace the modules named in ``specs`` by empty modules of the saved kinds and shapes.

    Raises:
        NetslimError: if a kind is unknown (the folder needs a newer netslim).
    """
    for name, spec in specs.items():
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind == "linear":
            new = nn.Linear(spec["in_features"], spec["out_features"], bias=spec["bias"])
        elif kind in _KINDS:
            new = _KINDS[kind].from_spec(spec)
        else:
            raise NetslimError(f"module kind '{kind}' of '{name}' is unknown to this netslim; upgrade netslim")
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
