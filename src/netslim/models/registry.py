"""Family registry keyed by Hugging Face ``config.model_type``."""

from __future__ import annotations

from netslim.errors import ConfigError, UnsupportedModelError
from netslim.models.spec import FamilySpec

_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Register ``spec`` for each of its model types and return it.

    Raises:
        ConfigError: if a model type is already claimed by another family.
    """
    for model_type in spec.model_types:
        if model_type in _FAMILIES:
            raise ConfigError(
                f"model type '{model_type}' is already registered by family "
                f"'{_FAMILIES[model_type].name}'"
            )
    for model_type in spec.model_types:
        _FAMILIES[model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    """All model types with an adapter, sorted."""
    return sorted(_FAMILIES)


def family_for_model_type(model_type: str) -> FamilySpec:
    """Look up the family of a ``config.model_type``.

    Raises:
        UnsupportedModelError: naming the supported model types.
    """
    try:
        return _FAMILIES[model_type]
    except KeyError:
        raise UnsupportedModelError(
            f"model type '{model_type}' is not supported; supported: "
            f"{', '.join(supported_model_types())}"
        ) from None


def families() -> list[FamilySpec]:
    """Every registered family once, in registration order."""
    seen: dict[str, FamilySpec] = {}
    for spec in _FAMILIES.values():
        seen.setdefault(spec.name, spec)
    return list(seen.values())
