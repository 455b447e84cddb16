"""Attention heads: one obvious place for how multi-head attention modules are pruned.

Reshapes that split a width into ``(heads, head_dim)`` cannot be followed channel by channel,
so an attention module is described once by an :class:`AttentionSpec` and treated as a unit:
a head is one pruning unit covering ``head_dim`` rows of the query, key and value projections
and ``head_dim`` columns of the output projection (when the module owns it).

Example:
    >>> register_attention(MyAttention, AttentionSpec("q", "k", "v", "proj", heads="num_heads"))

After a cut the module's ``heads`` attribute (and ``all_head_size``-style attributes named in
``widths``) are updated, so code that reshapes with them keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from netslim.graph.pruners import ChannelPruner, register_pruner


@dataclass(frozen=True)
class AttentionSpec:
    """Where one attention class keeps its projections and head count.

    Attributes:
        q, k, v: Names of the query, key and value ``nn.Linear`` submodules.
        o: Name of the output projection, or ``None`` when it lives outside the module
            (Hugging Face BERT keeps it in the sibling ``output.dense``).
        heads: Attribute holding the number of heads.
        head_dim: Attribute holding the width of one head.
        widths: Attributes holding ``heads * head_dim`` (updated on cuts).
    """

    q: str
    k: str
    v: str
    o: str | None
    heads: str
    head_dim: str
    widths: tuple[str, ...] = ()

    def num_heads(self, module: nn.Module) -> int:
        """The module's current head count."""
        return int(getattr(module, self.heads))

    def dim(self, module: nn.Module) -> int:
        """The width of one head."""
        return int(getattr(module, self.head_dim))


_SPECS: dict[type, AttentionSpec] = {}


def register_attention(module_type: type, spec: AttentionSpec) -> None:
    """Declare ``module_type`` as multi-head attention whose heads are pruning units."""
    _SPECS[module_type] = spec

    def heads_pruner(module: nn.Module, side: str) -> ChannelPruner:
        def resize(m: nn.Module, n: int) -> None:
            setattr(m, spec.heads, n)
            for attr in spec.widths:
                setattr(m, attr, n * spec.dim(m))

        return ChannelPruner({}, resize)

    register_pruner(module_type, heads_pruner)


def attention_spec(module: nn.Module) -> AttentionSpec | None:
    """The spec of ``module``'s class (or a base class), or ``None``."""
    for cls in type(module).__mro__:
        if cls in _SPECS:
            return _SPECS[cls]
    return None


def _register_transformers() -> None:
    try:
        from transformers.models.bert.modeling_bert import BertSelfAttention  # noqa: PLC0415
    except ImportError:  # transformers is a dependency, but keep this module importable alone
        return
    spec = AttentionSpec("query", "key", "value", None, "num_attention_heads", "attention_head_size", ("all_head_size",))
    register_attention(BertSelfAttention, spec)


_register_transformers()
