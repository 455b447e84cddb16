"""Compression methods. Each module registers one method; this list is the registry's source."""

from netslim.methods import magnitude, wanda  # noqa: F401  (registration side effect)
from netslim.methods.base import MethodConfig, Scope
from netslim.methods.magnitude import MagnitudeConfig
from netslim.methods.registry import build_config, get_method, method_names, register_method
from netslim.methods.wanda import WandaConfig

__all__ = [
    "MagnitudeConfig",
    "MethodConfig",
    "Scope",
    "WandaConfig",
    "build_config",
    "get_method",
    "method_names",
    "register_method",
]
