"""Propagating channel slots through a traced graph.

The traced model runs once on the example inputs. Beside every activation runs a *label
tensor* of the same shape whose elements hold the slot of the channel they belong to. Shape
operations (reshape, permute, flatten, cat, split, chunk, indexing) are simply applied to the
labels too, so no index maps are written by hand; element-wise operations unite the slots they
combine; layers with weights read labels (their input side) and create slots (their output
side) and record both as uses in the :class:`DependencyGraph`. Whatever is not understood
fixes the slots it touches, so an unknown operation can only make pruning more conservative.

Example:
    >>> graph = propagate(model, (torch.randn(1, 3, 32, 32),))
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_flatten

from netslim.graph import rules
from netslim.graph.dependency import DependencyGraph
from netslim.graph.slots import NONE
from netslim.graph.trace import trace

ELEMENTWISE = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
    torch.mul, torch.div, torch.where, torch.maximum, torch.minimum, torch.relu, torch.sigmoid,
    torch.tanh, torch.exp, torch.sqrt, torch.rsqrt, torch.abs, torch.softmax, torch.clamp, F.relu,
    F.relu6, F.gelu, F.silu, F.sigmoid, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish,
    F.softmax, F.dropout, F.tanh,
    "add", "sub", "mul", "div", "add_", "sub_", "mul_", "div_", "relu", "relu_", "sigmoid", "tanh",
    "exp", "sqrt", "rsqrt", "abs", "neg", "softmax", "clamp", "clamp_", "masked_fill", "pow",
    "float", "to", "type_as", "half", "double", "detach", "clone", "contiguous", "sigmoid_",
}  # fmt: skip
SHAPE = {
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.unsqueeze, torch.squeeze,
    torch.chunk, torch.split, torch.unbind, torch.narrow, torch.cat, torch.concat, torch.stack,
    operator.getitem,
    "view", "reshape", "flatten", "unflatten", "permute", "transpose", "unsqueeze", "squeeze",
    "expand", "expand_as", "chunk", "split", "unbind", "narrow", "t", "__getitem__",
}  # fmt: skip
SPLITTING = {torch.reshape, "view", "reshape", "unflatten"}  # may split a channel dimension
REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin", "std", "var"}
SPATIAL = {
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool1d, F.avg_pool2d,
    F.max_pool1d, F.max_pool2d, F.interpolate, F.pad,
}  # fmt: skip
MATMUL = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"}
NO_LABELS = {getattr, "size", "dim", "numel"}

PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softmax, nn.Identity, nn.Dropout, nn.Dropout2d,
)  # fmt: skip
SPATIAL_MODULES = (
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._MaxPoolNd, nn.Upsample, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
)  # fmt: skip
SHAPE_MODULES = (nn.Flatten, nn.Unflatten)


class _Propagator(fx.Interpreter):
    """Runs the graph on real inputs and computes the label tensor of every node."""

    def __init__(self, gm: fx.GraphModule, graph: DependencyGraph) -> None:
        super().__init__(gm)
        self.ctx = rules.Context(graph)
        self.labels: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        value = super().run_node(n)
        self.labels[n] = self._labels(n, value)
        return value

    def _arg_labels(self, n: fx.Node):
        return fx.node.map_arg((n.args, n.kwargs), lambda node: self.labels[node])

    def _arg_values(self, n: fx.Node):
        return fx.node.map_arg((n.args, n.kwargs), lambda node: self.env[node])

    def _labels(self, n: fx.Node, value: Any) -> Any:
        ctx = self.ctx
        if n.op == "placeholder":
            return rules.like(value, NONE)
        if n.op == "get_attr":
            return rules.like(value, ctx.fixed_slot)
        if n.op == "output":
            ctx.fix_all(self._arg_labels(n))
            return None
        if n.op == "call_module":
            module = self.module.get_submodule(n.target)
            (args, _) = self._arg_labels(n)
            return _module_rule(module)(ctx, n.target, module, args[0] if args else None, value)
        return self._function(n, value)

    def _function(self, n: fx.Node, value: Any) -> Any:
        ctx, target = self.ctx, n.target
        (largs, lkwargs), (vargs, vkwargs) = self._arg_labels(n), self._arg_values(n)
        if target in NO_LABELS:
            return None
        if target in ELEMENTWISE:
            return ctx.elementwise(tree_flatten((largs, lkwargs))[0], vargs, value)
        if target in SHAPE:
            return ctx.shape_op(target, largs, vargs, vkwargs, value, target in SPLITTING, n.args)
        if target in REDUCTIONS:
            return ctx.reduction(largs[0], vargs, vkwargs, value)
        if target in SPATIAL:
            return ctx.spatial(largs[0], value)
        if target in MATMUL:
            return ctx.matmul(largs[0], largs[1], value)
        if target is F.scaled_dot_product_attention:
            return ctx.sdpa(largs[0], largs[1], largs[2], value)
        return ctx.unknown((largs, lkwargs), value)


def _module_rule(module: nn.Module) -> Callable:
    rule = rules.module_rule(module)
    if rule is not None:
        return rule
    if isinstance(module, PASS_MODULES):
        return rules.passthrough
    if isinstance(module, SPATIAL_MODULES):
        return lambda ctx, name, m, inp, value: ctx.spatial(inp, value)
    if isinstance(module, SHAPE_MODULES):
        return lambda ctx, name, m, inp, value: m(inp)
    return lambda ctx, name, m, inp, value: ctx.unknown(inp, value)


def propagate(model: nn.Module, example_inputs: tuple) -> DependencyGraph:
    """Trace ``model`` and build its dependency graph by running it on ``example_inputs``."""
    gm = trace(model)
    graph = DependencyGraph(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _Propagator(gm, graph).run(*example_inputs)
    finally:
        model.train(was_training)
    return graph

