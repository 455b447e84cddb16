"""Hugging Face BERT-style encoders: heads and FFN neurons, without tracing.

``transformers`` encoders build masks with data-dependent Python that ``torch.fx`` cannot
trace, but their structure is regular, so the groups are read off the module tree: in every
layer, one group of attention heads (query/key/value rows and ``attention.output.dense``
columns) and one group of FFN neurons (``intermediate.dense`` rows and ``output.dense``
columns). The hidden width (the residual stream) is left alone.

Example:
    >>> graph = encoder_graph(AutoModel.from_pretrained("sentence-transformers/all-MiniLM-L6-v2"))
"""

from __future__ import annotations

from torch import nn

from netslim.graph.attention import attention_spec
from netslim.graph.dependency import DependencyGraph


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every encoder layer: attention.self + attention.output + intermediate + output."""
    found = []
    for name, module in model.named_modules():
        attn = getattr(module, "attention", None)
        if (
            attn is not None
            and attention_spec(getattr(attn, "self", None)) is not None
            and hasattr(getattr(attn, "output", None), "dense")
            and hasattr(getattr(module, "intermediate", None), "dense")
            and hasattr(getattr(module, "output", None), "dense")
        ):
            found.append((name, module))
    return found


def is_encoder(model: nn.Module) -> bool:
    """Whether ``model`` is a ``transformers`` BERT-style encoder this path handles."""
    return hasattr(model, "config") and bool(_layers(model))


def encoder_graph(model: nn.Module) -> DependencyGraph:
    """The head and FFN groups of every layer of a BERT-style encoder."""
    graph = DependencyGraph(model)
    for name, layer in _layers(model):
        attn = layer.attention.self
        spec = attention_spec(attn)
        heads = graph.slots.new(spec.num_heads(attn))
        rows = heads.repeat_interleave(spec.dim(attn))
        graph.add_use(f"{name}.attention.self", "out", heads)
        for part in (spec.q, spec.k, spec.v):
            graph.add_use(f"{name}.attention.self.{part}", "out", rows)
        graph.add_use(f"{name}.attention.output.dense", "in", rows)
        neurons = graph.slots.new(layer.intermediate.dense.out_features)
        graph.add_use(f"{name}.intermediate.dense", "out", neurons)
        graph.add_use(f"{name}.output.dense", "in", neurons)
    return graph
