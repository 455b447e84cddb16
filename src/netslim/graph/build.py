"""Building the dependency graph of a model: read off a Hugging Face encoder, or traced.

Above :mod:`netslim.graph.dependency` (the graph), :mod:`netslim.graph.hf` (encoders) and
:mod:`netslim.graph.propagate` (tracing), all of which it imports.

Example:
    >>> graph = build_graph(model, (torch.randn(1, 3, 32, 32),))
    >>> group = graph.groups()[0]
"""

from __future__ import annotations

from torch import nn

from netslim.graph.dependency import DependencyGraph
from netslim.graph.hf import encoder_graph, is_encoder
from netslim.graph.propagate import propagate


def build_graph(model: nn.Module, example_inputs: tuple, ignore: tuple[str, ...] = ()) -> DependencyGraph:
    """The dependency graph of ``model`` (a Hugging Face encoder, or anything ``torch.fx`` traces).

    Raises:
        GraphTraceError: naming the operation that could not be traced.
    """
    graph = encoder_graph(model) if is_encoder(model) else propagate(model, example_inputs)
    if ignore:
        graph.fix_modules(ignore)
    return graph
