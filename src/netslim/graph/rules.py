"""Propagation rules: how labels flow through each kind of operation.

A module rule is ``rule(ctx, name, module, input_labels, output_value) -> output_labels``. It
records the module's uses with ``ctx.graph.add_use`` and returns the labels of its output.
:func:`register_rule` adds one for a custom layer (together with a pruner from
:mod:`netslim.graph.pruners`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

from netslim.graph.attention import attention_spec
from netslim.graph.dependency import DependencyGraph
from netslim.graph.slots import NONE

Labels = torch.Tensor
ModuleRule = Callable[["Context", str, nn.Module, Any, Any], Any]


def like(value: Any, label: int) -> Any:
    """A label structure mirroring ``value``: each tensor filled with ``label``."""
    return tree_map(lambda v: torch.full(v.shape, label, dtype=torch.long) if isinstance(v, torch.Tensor) else None, value)


def spread(row: Labels, shape: torch.Size, dim: int) -> Labels:
    """Labels of ``shape`` that are ``row`` along ``dim`` and constant elsewhere."""
    dim = dim % len(shape)
    view = [1] * len(shape)
    view[dim] = -1
    return row.view(view).expand(shape)


def varies(labels: Labels, dim: int) -> bool:
    """Whether labels differ along ``dim``."""
    return bool((labels != labels.narrow(dim, 0, 1)).any())


class Context:
    """The graph being built plus the generic rules (one per kind of operation)."""

    def __init__(self, graph: DependencyGraph) -> None:
        self.graph = graph
        self.slots = graph.slots
        self.fixed_slot = int(self.slots.new(1)[0])
        self.slots.fix(torch.tensor([self.fixed_slot]))

    def fix_all(self, labels: Any) -> None:
        """Fix every slot found in a label structure."""
        for leaf in tree_flatten(labels)[0]:
            if isinstance(leaf, torch.Tensor):
                self.slots.fix(leaf)

    def unknown(self, labels: Any, value: Any) -> Any:
        """An operation netslim does not understand: fix its inputs, its output is fixed."""
        self.fix_all(labels)
        return like(value, self.fixed_slot)

    def channel_labels(self, labels: Labels | None, dim: int, size: int) -> Labels:
        """The 1-D labels along ``dim``; fixed when they differ across the other dimensions."""
        if labels is None:
            return torch.full((size,), NONE, dtype=torch.long)
        rows = labels.movedim(dim, -1).reshape(-1, labels.shape[dim])
        if (rows != rows[:1]).any():
            self.slots.fix(rows)
        return rows[0].clone()

    def elementwise(self, labels: list, values: tuple, value: Any) -> Any:
        """Unite the labels combined element by element; the output carries them."""
        if not isinstance(value, torch.Tensor):
            return self.unknown(labels, value)
        tensors = [lab.expand(value.shape) for lab in labels if isinstance(lab, torch.Tensor)]
        if not tensors:
            return like(value, NONE)
        out = tensors[0]
        for other in tensors[1:]:
            self.slots.union_pairs(out, other)
            out = torch.where(out != NONE, out, other)
        return out

    def shape_op(self, target, largs, vargs, vkwargs, value, may_split: bool, raw_args) -> Any:
        """Apply the same shape operation to the labels."""
        if target in (torch.cat, torch.concat, torch.stack):
            parts = [lab if lab is not None else like(v, NONE) for lab, v in zip(largs[0], vargs[0])]
            return target(parts, *vargs[1:], **vkwargs)
        first = largs[0]
        if not isinstance(first, torch.Tensor):  # indexing a tuple of outputs
            return first[vargs[1]] if isinstance(first, (tuple, list)) else None
        fn = getattr(torch.Tensor, target) if isinstance(target, str) else target
        out = fn(first, *vargs[1:], **vkwargs)
        if (may_split and self._splits(first, out, raw_args[1:])) or self._selects(first, out):
            self.slots.fix(first)
        return out

    @staticmethod
    def _selects(before: Labels, after: Any) -> bool:
        """Whether an output keeps only some channels (chunks, slices): widths would shift."""
        channels = set(torch.unique(before).tolist()) - {NONE}
        parts = [t for t in tree_flatten(after)[0] if isinstance(t, torch.Tensor)]
        return any(set(torch.unique(t).tolist()) - {NONE} != channels for t in parts)

    @staticmethod
    def _splits(before: Labels, after: Labels, shape_args: tuple) -> bool:
        """A reshape that splits a channel dimension, or sizes a channel dimension by a constant."""
        n_before = sum(varies(before, d) for d in range(before.dim()))
        n_after = [d for d in range(after.dim()) if varies(after, d)]
        if len(n_after) > n_before:
            return True
        sizes = shape_args[0] if len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list)) else shape_args
        return any(d < len(sizes) and isinstance(sizes[d], int) and sizes[d] != -1 for d in n_after)

    def reduction(self, labels: Labels | None, vargs: tuple, vkwargs: dict, value: Any) -> Any:
        """Reducing spatial dimensions keeps channels; reducing a channel dimension drops them."""
        if labels is None or not isinstance(value, torch.Tensor):
            return like(value, NONE)
        dims = vkwargs.get("dim", vargs[1] if len(vargs) > 1 else None)
        keepdim = vkwargs.get("keepdim", vargs[2] if len(vargs) > 2 else False)
        if dims is None:
            return like(value, NONE)
        dims = sorted({d % labels.dim() for d in ((dims,) if isinstance(dims, int) else dims)}, reverse=True)
        out = labels
        for d in dims:
            out = out.narrow(d, 0, 1) if not varies(out, d) else torch.full_like(out.narrow(d, 0, 1), NONE)
            if (out == NONE).all():
                out = torch.full_like(out, NONE)
        if not keepdim:
            for d in dims:
                out = out.squeeze(d)
        return out if out.shape == value.shape else self.unknown(labels, value)

    def spatial(self, labels: Labels | None, value: Any) -> Any:
        """Pooling, padding, resizing: channel ``c`` of the output is channel ``c`` of the input."""
        if labels is None or not isinstance(value, torch.Tensor):
            return like(value, NONE)
        if labels.dim() != value.dim() or labels.shape[:2] != value.shape[:2]:
            return self.unknown(labels, value)
        return spread(self.channel_labels(labels, 1, labels.shape[1]), value.shape, 1)

    def matmul(self, a: Labels | None, b: Labels | None, value: Any) -> Any:
        """``a @ b``: contracted channels are united; the output keeps the uncontracted ones."""
        if a is None or b is None or a.dim() < 2 or b.dim() < 2:
            return self.unknown([a, b], value)
        a_k, b_k = varies(a, -1), varies(b, -2)
        if a_k and b_k:
            pairs = torch.broadcast_tensors(a.unsqueeze(-1), b.unsqueeze(-3))
            self.slots.union_pairs(*pairs)
        elif a_k or b_k:  # the contracted width is tied to an operand that cannot shrink with it
            self.slots.fix(a if a_k else b)
        a_rows = not a_k and bool((a != NONE).any())
        b_cols = not b_k and bool((b != NONE).any())
        if a_rows and b_cols:
            return self.unknown([a, b], value)
        if b_cols:
            return b.narrow(-2, 0, 1).expand(value.shape)
        if a_rows:
            return a.narrow(-1, 0, 1).expand(value.shape)
        return like(value, NONE)

    def sdpa(self, q: Labels, k: Labels, v: Labels, value: Any) -> Any:
        """Scaled dot-product attention: query and key channels are united, values carried."""
        self.slots.union_pairs(*torch.broadcast_tensors(q.narrow(-2, 0, 1), k.narrow(-2, 0, 1)))
        return v.narrow(-2, 0, 1).expand(value.shape)


def passthrough(ctx: Context, name: str, module: nn.Module, inp: Any, value: Any) -> Any:
    """Element-wise modules: the output carries the input's labels."""
    return inp if inp is not None else like(value, NONE)


def _producer(ctx: Context, name: str, in_row: Labels, out_size: int, value: Any, dim: int) -> Labels:
    ctx.graph.add_use(name, "in", in_row)
    out = ctx.slots.new(out_size)
    ctx.graph.add_use(name, "out", out)
    return spread(out, value.shape, dim)


def linear(ctx: Context, name: str, module: nn.Linear, inp: Any, value: Any) -> Any:
    """Rows of a Linear are new channels; its columns read the input's last dimension."""
    in_row = ctx.channel_labels(inp, -1, module.in_features)
    return _producer(ctx, name, in_row, module.out_features, value, -1)


def conv(ctx: Context, name: str, module: nn.modules.conv._ConvNd, inp: Any, value: Any) -> Any:
    """Convolutions; with groups, one unit is a whole group (inputs and outputs together)."""
    if module.transposed:
        return ctx.unknown(inp, value)
    in_row = ctx.channel_labels(inp, 1, module.in_channels)
    if module.groups == 1:
        return _producer(ctx, name, in_row, module.out_channels, value, 1)
    group_slots = ctx.slots.new(module.groups)
    per_group = module.in_channels // module.groups
    for g, slot in enumerate(group_slots.tolist()):
        for label in in_row[g * per_group : (g + 1) * per_group].tolist():
            ctx.slots.union(slot, label)
    ctx.graph.add_use(name, "in", in_row)
    out = group_slots.repeat_interleave(module.out_channels // module.groups)
    ctx.graph.add_use(name, "out", out)
    return spread(out, value.shape, 1)


def norm(ctx: Context, name: str, module: nn.Module, inp: Any, value: Any) -> Any:
    """Batch, group and layer norms scale channels in place (group norm unites each group)."""
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) != 1:
        return ctx.unknown(inp, value)
    dim = -1 if isinstance(module, nn.LayerNorm) else 1
    row = ctx.channel_labels(inp, dim, value.shape[dim])
    if isinstance(module, nn.GroupNorm):
        per_group = module.num_channels // module.num_groups
        for g in range(module.num_groups):
            for label in row[g * per_group + 1 : (g + 1) * per_group].tolist():
                ctx.slots.union(int(row[g * per_group]), label)
    ctx.graph.add_use(name, "out", row)
    return inp


def embedding(ctx: Context, name: str, module: nn.Embedding, inp: Any, value: Any) -> Any:
    """Embedding columns are new channels."""
    out = ctx.slots.new(module.embedding_dim)
    ctx.graph.add_use(name, "out", out)
    return spread(out, value.shape, -1)


def attention(ctx: Context, name: str, module: nn.Module, inp: Any, value: Any) -> Any:
    """A registered attention module: each head is one unit across q, k, v (and o)."""
    spec = attention_spec(module)
    q = module.get_submodule(spec.q)
    in_row = ctx.channel_labels(inp, -1, q.in_features)
    heads = ctx.slots.new(spec.num_heads(module))
    rows = heads.repeat_interleave(spec.dim(module))
    ctx.graph.add_use(name, "out", heads)
    for part in (spec.q, spec.k, spec.v):
        ctx.graph.add_use(f"{name}.{part}", "in", in_row)
        ctx.graph.add_use(f"{name}.{part}", "out", rows)
    out_row = rows
    if spec.o is not None:
        o = module.get_submodule(spec.o)
        ctx.graph.add_use(f"{name}.{spec.o}", "in", rows)
        out_row = ctx.slots.new(o.out_features)
        ctx.graph.add_use(f"{name}.{spec.o}", "out", out_row)
    first = value[0] if isinstance(value, (tuple, list)) else value
    labels = spread(out_row, first.shape, -1)
    return (labels, *like(tuple(value[1:]), NONE)) if isinstance(value, (tuple, list)) else labels


_RULES: dict[type, ModuleRule] = {
    nn.Linear: linear,
    nn.modules.conv._ConvNd: conv,
    nn.modules.batchnorm._BatchNorm: norm,
    nn.LayerNorm: norm,
    nn.GroupNorm: norm,
    nn.Embedding: embedding,
}


def register_rule(module_type: type, rule: ModuleRule) -> None:
    """Register the propagation rule of a custom leaf module type."""
    _RULES[module_type] = rule


def module_rule(module: nn.Module) -> ModuleRule | None:
    """The rule for ``module`` (attention spec first, then the type table), or ``None``."""
    if attention_spec(module) is not None:
        return attention
    for cls in type(module).__mro__:
        if cls in _RULES:
            return _RULES[cls]
    return None
