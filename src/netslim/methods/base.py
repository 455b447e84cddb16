"""What every method shares: the config base class, the handler protocol, views and scopes.

A method is a validated config class bound to one handler (a :class:`Handler` subclass) by
:func:`netslim.methods.registry.register_method`. The config class carries what the engine
needs as class attributes: its ``scope``, the statistics it ``needs``, the ``handler`` the
registry binds, what it ``accepts`` and ``produces`` (for the checks before work). The engine
reads these from the config it is handed and never looks a method up by name; it makes one
handler instance per stage and calls its hooks in a fixed order:

1. :meth:`Handler.plan` once, with the engine's statistics-only sweep of the model, returning
   the config with every model-wide choice resolved (the run's record, replayable);
2. :meth:`Handler.start` once, before the first block (may change what enters block 0);
3. per block in order: :meth:`Handler.act_layer` on every projection with its input
   statistics (``Scope.LAYER``), or :meth:`Handler.act_block` on the whole block
   (``Scope.BLOCK``); the engine then runs the compressed block to feed the next one;
4. :meth:`Handler.finish` once, after the last block.

A layer method needs only ``act_layer``: decorating a function ``(layer, stats, cfg) -> dict``
with ``register_method`` makes it one. ``Scope.GRAPH`` methods act on vision and encoder models
(:mod:`netslim.models.tasks`) through :meth:`Handler.act_graph`, and never enter the engine.
``Scope.MODEL`` stages (``recover``) never enter it either: :func:`netslim.compress` calls their
:meth:`Handler.prepare` on the model as given, before the first stage, and their
:meth:`Handler.act_model` at their turn, between the engine's runs of the other stages.
"""

from __future__ import annotations

import enum
import fnmatch
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from netslim.engine.records import RunLog
from netslim.engine.stats import BlockStats, LayerStats, Stat
from netslim.engine.step import BlockStep
from netslim.errors import ConfigError, did_you_mean
from netslim.models.adapter import ModelAdapter, linear_weight


FLOAT = "float"  # the kind of a plain projection (nn.Linear, GPT-2's Conv1D)
# The engine's statistics-only pass (netslim.engine.sweep.iter_block_stats bound to the model and
# its calibration): ``sweep(needs, windows=None, gradient_windows=None)`` yields (block index, BlockStats).
Sweep = Callable[..., Iterator[tuple[int, BlockStats]]]
_ORDER_HINT = ("order the recipe as structure (width, depth, slicegpt), then pruning, then low rank or "
               "quantization, then eora")


@dataclass
class LayerShape:
    """What a static check knows of one projection: its kind and widths (``None`` if unknown)."""

    kind: str
    in_features: int | None
    out_features: int | None
    made_by: str | None = None


@dataclass
class ModelShape:
    """The structure of a model as a recipe passes over it, for checks before any work.

    Built from a model (or from its config on the meta device, so no weight is read) by
    :func:`netslim.methods.preflight.model_shape`; each stage's :meth:`MethodConfig.preflight`
    checks it and updates it to what the stage leaves.
    """

    family: str
    num_blocks: int
    layers: dict[str, LayerShape]
    adapter: ModelAdapter  # the model (possibly on the meta device) it was read from
    module_kinds: set[str] = field(default_factory=set)

    def touched(self, cfg: MethodConfig) -> list[str]:
        """Projections a stage acts on: every layer its ``ignore`` patterns leave."""
        return [name for name in self.layers if not cfg.ignores(name)]


class Scope(str, enum.Enum):
    """The unit a method's handler acts on."""

    LAYER = "layer"  # each projection, in the engine's pass over the blocks (stages of this scope share a pass)
    BLOCK = "block"  # each whole block, in a pass of its own (heads, neurons, residual basis, removal)
    GRAPH = "graph"  # any nn.Module through its dependency graph (netslim.graph), not a causal-LM pass
    MODEL = "model"  # the whole causal LM at once, outside the engine (training: recover)


class MethodConfig(BaseModel):
    """Base of all method configs: frozen, and a typo in any field is an error.

    Attributes:
        method: The registry name (a ``Literal`` in each subclass).
        version: Config schema version, stored with recipes.
        ignore: ``fnmatch`` patterns of full module names to leave untouched, e.g.
            ``["model.layers.0.*", "*.down_proj"]``.
        true_sequential: Calibrate the groups of a block one after another (q/k/v, then o,
            then gate/up, then down; every routed expert's gate/up, then every down, of a
            mixture of experts together), so each group sees the inputs produced by the
            already compressed groups before it. Costs one block forward per stage.
        needs_original: (class attribute) Whether the method needs each layer's weight as it
            was before the earlier stages of the same pass acted on it (e.g. to compensate
            their error). The engine then snapshots a block's weights before its first stage
            and passes them as :attr:`LayerView.original`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def __init__(self, **settings: Any) -> None:
        try:
            super().__init__(**settings)
        except ValidationError as exc:
            raise ConfigError(_explain(exc, type(self))) from None

    method: str
    version: int = 1
    ignore: tuple[str, ...] = ()
    true_sequential: bool = False

    scope: ClassVar[Scope] = Scope.LAYER
    handler: ClassVar[type[Handler] | None] = None  # bound by register_method
    needs: ClassVar[frozenset[Stat]] = frozenset()
    needs_original: ClassVar[bool] = False
    accepts: ClassVar[frozenset[str] | None] = frozenset({FLOAT})

    def produces(self) -> str | None:
        """The kind of projection this stage leaves behind (a module kind such as
        ``"quantized"``), or ``None`` when projections stay plain float layers."""
        return None

    def preflight(self, shape: ModelShape) -> None:
        """Check this stage against the model's structure before any work, then update
        ``shape`` to what the stage will leave.

        The default refuses projections of a kind the stage cannot act on (class attribute
        ``accepts``: ``None`` for any kind) and records :meth:`produces`. Subclasses add
        their own checks (N:M divisibility, block counts) and call ``super()``.

        Raises:
            ConfigError: naming the stage, the layer and what to change.
        """
        produced = self.produces()
        for name in shape.touched(self):
            layer = shape.layers[name]
            if self.accepts is not None and layer.kind not in self.accepts:
                after = f" (made by stage '{layer.made_by}')" if layer.made_by else ""
                raise ConfigError(
                    f"{self.method} cannot act on {name}, a {layer.kind} layer{after}; "
                    f"{_ORDER_HINT}"
                )
            if produced is not None:
                shape.layers[name] = LayerShape(produced, layer.in_features, layer.out_features, self.method)

    @property
    def needs_calibration(self) -> bool:
        """Whether this stage needs calibration data (for its statistics or its :meth:`plan`)."""
        return bool(self.needs)

    def texts(self) -> list[str]:
        """Text sources the stage reads besides the calibration text (``recover``'s recovery
        text); the job checks them against the evaluation text before any work."""
        return []

    def ignores(self, name: str) -> bool:
        """Whether module ``name`` matches an ignore pattern."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.ignore)


class Handler:
    """The hooks the engine calls for one stage, in the order of the module docstring.

    One instance serves one run of one stage, so what :meth:`plan` learns (scores, bases)
    can be kept on ``self`` for the later hooks. ``plan``, ``start`` and ``finish`` do nothing
    by default; the act hook of the method's scope is the one a method must implement.
    """

    def plan(self, cfg: MethodConfig, adapter: ModelAdapter, sweep: Sweep | None) -> MethodConfig:
        """Resolve model-wide choices before the pass, on the model as earlier passes left it.

        ``sweep`` (``None`` without calibration data) is the engine's statistics-only pass;
        return a copy of ``cfg`` with the choices spelled out (OWL's per-block sparsities,
        ranks, per-block widths, removed blocks), so replaying it gives the same weights.
        """
        return cfg

    def start(self, cfg: MethodConfig, step: BlockStep) -> bool:
        """Before the first block; ``step`` is block 0 with its calibration inputs. Return
        ``True`` when the hook changed what enters block 0 (the engine then captures it anew)."""
        return False

    def act_layer(self, layer: LayerView, stats: LayerStats | None, cfg: MethodConfig) -> dict | None:
        """``Scope.LAYER``: compress one projection; return its record fields."""
        raise NotImplementedError(f"{cfg.method}: a layer-scope method implements act_layer")

    def act_block(self, cfg: MethodConfig, step: BlockStep) -> None:
        """``Scope.BLOCK``: compress block ``step.index``, recording through ``step.record``."""
        raise NotImplementedError(f"{cfg.method}: a block-scope method implements act_block")

    def finish(self, cfg: MethodConfig, adapter: ModelAdapter, log: RunLog) -> None:
        """After the last block (model-level changes: the LM head, the config, removed blocks)."""

    def prepare(self, cfg: MethodConfig, adapter: ModelAdapter, tokenizer: Any, held_out: Any, bos_id: int | None,
                progress: bool) -> None:
        """``Scope.MODEL``: before the recipe's first stage, on the model as given (the dense
        model: a teacher's outputs are cached here); ``held_out`` is the evaluation text (a TextSource)
        its data must not overlap, or ``None``."""

    def act_model(self, cfg: MethodConfig, adapter: ModelAdapter, log: RunLog, checkpoint_dir: Any,
                  progress: bool) -> dict:
        """``Scope.MODEL``: act on the whole model at the stage's turn (never called by the
        engine: :func:`netslim.compress` calls it between engine runs); return a summary."""
        raise NotImplementedError(f"{cfg.method}: a model-scope method implements act_model")

    def act_graph(self, task: Any, cfg: MethodConfig) -> Any:
        """``Scope.GRAPH``: prune a vision or encoder model (never called by the engine)."""
        raise NotImplementedError(f"{cfg.method}: a graph-scope method implements act_graph")


@dataclass
class LayerView:
    """One projection inside a block, as a method sees it.

    ``original`` is the (out, in) weight before this pass's first stage touched the block,
    set only for methods whose config has ``needs_original``.
    """

    name: str
    module: nn.Module
    block_index: int
    parent: nn.Module
    attr: str
    original: torch.Tensor | None = None

    @property
    def weight(self) -> torch.Tensor:
        """The weight as an (out_features, in_features) view; write into it in place."""
        return linear_weight(self.module)

    def replace(self, new_module: nn.Module) -> None:
        """Swap the module for another (a quantized or factorized one) in its parent."""
        setattr(self.parent, self.attr, new_module)
        self.module = new_module


def layer_view(
    adapter: ModelAdapter, block_index: int, name: str, original: torch.Tensor | None = None
) -> LayerView:
    """Build the :class:`LayerView` of full module name ``name`` in block ``block_index``."""
    parent_name, _, attr = name.rpartition(".")
    parent = adapter.model.get_submodule(parent_name)
    return LayerView(name, getattr(parent, attr), block_index, parent, attr, original)


__all__ = ["FLOAT", "BlockStats", "BlockStep", "Handler", "LayerShape", "LayerStats", "LayerView", "MethodConfig",
           "ModelShape", "Scope", "Stat", "Sweep", "layer_view"]


def _explain(exc: ValidationError, config_cls: type[MethodConfig]) -> str:
    """One line naming each bad setting, the value and what is allowed."""
    name = config_cls.model_fields["method"].default
    fields = [f for f in config_cls.model_fields if f != "method"]
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            problems.append(
                f"unknown setting '{key}' for {name}{did_you_mean(key, fields)} "
                f"(valid: {', '.join(fields)})"
            )
        else:
            message = err["msg"].removeprefix("Value error, ")
            shown = f"={err['input']!r}" if "input" in err and not isinstance(err["input"], dict) else ""
            problems.append(f"{name}: {key}{shown}: {message}")
    return "; ".join(problems)
