"""Tracing a model into a ``torch.fx`` graph, with leaves netslim knows how to prune.

Modules of ``torch.nn``, their subclasses with a rule, and attention modules stay leaves (their internals are
described by the pruner table); everything else is traced through. When symbolic tracing
fails (data-dependent control flow, unsupported Python), :class:`GraphTraceError` names the
module and the operation, and says what to do.
"""

from __future__ import annotations

import os
import traceback

import torch.fx as fx
from torch import nn

from netslim.graph.rules import module_rule
from netslim.graph.errors import GraphTraceError


class _Tracer(fx.Tracer):
    """Standard leaves plus attention modules; records the module being traced for errors."""

    def __init__(self) -> None:
        super().__init__()
        self.current = ""

    def is_leaf_module(self, module: nn.Module, qualname: str) -> bool:
        # Subclasses of known layers (a Conv2d with static padding) are leaves too.
        return module_rule(module) is not None or super().is_leaf_module(module, qualname)

    def call_module(self, module, forward, args, kwargs):
        previous, self.current = self.current, self.path_of_module(module)
        try:
            return super().call_module(module, forward, args, kwargs)
        finally:
            self.current = previous


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``.

    Raises:
        GraphTraceError: naming the operation (and the submodule) that could not be traced.
    """
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001  (fx raises many types; all mean "not traceable")
        where = f" in submodule '{tracer.current}'" if tracer.current else ""
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GraphTraceError(
            f"cannot trace {type(model).__name__}{where}{_user_line(exc)}: {detail}; make that code free of "
            "data-dependent control flow, or register the module as a leaf/attention module"
        ) from exc
    return fx.GraphModule(tracer.root, graph)


def _user_line(exc: BaseException) -> str:
    """`` at file:line `code` `` of the innermost frame outside torch, where tracing failed."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f"{os.sep}torch{os.sep}" not in f.filename]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {os.path.basename(frame.filename)}:{frame.lineno} `{(frame.line or '').strip()}`"
