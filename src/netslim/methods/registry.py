"""Method registry: name -> config class, whose ``handler`` the decorator binds.

Example:
    >>> @register_method("wanda", WandaConfig)
    ... def wanda(layer: LayerView, stats: LayerStats, cfg: WandaConfig) -> dict: ...
    >>> build_config({"method": "wanda", "ratio": 0.5})
    WandaConfig(method='wanda', ratio=0.5, ...)

A function becomes the ``act_layer`` hook (``act_graph`` for ``Scope.GRAPH`` configs) of a
:class:`~netslim.methods.base.Handler` subclass (``base``, to inherit a ``plan`` such as
OWL's); a method with more hooks decorates its ``Handler`` subclass itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


from netslim.errors import ConfigError, did_you_mean, refuse_renamed
from netslim.methods.base import Handler, MethodConfig, Scope


_METHODS: dict[str, type[MethodConfig]] = {}


def register_method(name: str, config_cls: type[MethodConfig], base: type[Handler] = Handler):
    """Decorator binding a handler to ``config_cls``, registered as method ``name``.

    Decorates a :class:`Handler` subclass, or a function that becomes the ``act_layer`` (or,
    for ``Scope.GRAPH``, ``act_graph``) hook of a subclass of ``base``. The engine makes one
    ``config.handler()`` per stage and calls its hooks.

    Raises:
        ConfigError: if the name is taken or the class is already bound.
    """

    def decorator(fn: Callable[..., Any] | type[Handler]) -> Callable[..., Any] | type[Handler]:
        if name in _METHODS:
            raise ConfigError(f"method '{name}' is already registered")
        if "handler" in vars(config_cls) and config_cls.handler is not None:
            raise ConfigError(f"{config_cls.__name__} is already bound to a handler")
        if isinstance(fn, type) and issubclass(fn, Handler):
            handler = fn
        else:
            hook = "act_graph" if config_cls.scope is Scope.GRAPH else "act_layer"
            handler = type(f"{config_cls.__name__}Handler", (base,), {hook: staticmethod(fn), "__doc__": fn.__doc__})
        config_cls.handler = handler
        _METHODS[name] = config_cls
        return fn

    return decorator


def unregister_method(name: str) -> None:
    """Remove a method (for tests and plugins that register temporary methods)."""
    config_cls = _METHODS.pop(name, None)
    if config_cls is not None and "handler" in vars(config_cls):
        config_cls.handler = None


def method_names() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type[MethodConfig]:
    """The config class of method ``name`` (its ``handler`` and ``scope`` are class attributes).

    Raises:
        ConfigError: naming the close match and the registered methods.
    """
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown method '{name}'{did_you_mean(name, _METHODS)} "
            f"(registered: {', '.join(method_names())})"
        ) from None


def build_config(stage: MethodConfig | Mapping[str, Any], where: str = "") -> MethodConfig:
    """Validate one recipe stage into its config object.

    Args:
        stage: A config instance, or a mapping with a ``method`` key and its settings.
        where: Prefix for error messages, e.g. ``"stage 2: "``.

    Raises:
        ConfigError: one line naming the bad field, the value and what is allowed.
    """
    if isinstance(stage, MethodConfig):
        get_method(stage.method)
        return stage
    if not isinstance(stage, Mapping):
        raise ConfigError(f"{where}a stage must be a mapping with a 'method' key, got {stage!r}")
    if "method" not in stage:
        raise ConfigError(f"{where}missing 'method' (registered: {', '.join(method_names())})")
    name = str(stage["method"])
    config_cls = get_method(name)
    refuse_renamed(stage, config_cls.model_fields, f"{where}{name}: ")
    try:
        return config_cls(**stage)
    except ConfigError as exc:  # MethodConfig explains its validation errors in one line
        raise ConfigError(where + str(exc)) from None
