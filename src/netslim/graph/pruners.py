"""Layer surgery: a table from module type to how one of its dimensions is cut.

A :class:`ChannelPruner` is data: which parameters and buffers hold the dimension (name ->
axis) and how the module's size attributes change. Cutting and zeroing are the same two
generic functions over that data, so a new layer type needs one factory, not new surgery:

    >>> register_pruner(MyLayer, lambda m, side: ChannelPruner({"scale": 0}, _set("width")))

Sides: ``"out"`` is the dimension a module produces (Linear rows, Conv output channels, the
features of a norm layer, the heads of an attention module); ``"in"`` the one it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from netslim.graph.errors import GraphPruneError

Resize = Callable[[nn.Module, int], None]


@dataclass(frozen=True)
class ChannelPruner:
    """How to cut one side of one module.

    Attributes:
        params: Parameter or buffer name -> the axis that holds the channels.
        resize: Updates the module's size attributes to the new width.
    """

    params: Mapping[str, int]
    resize: Resize


PrunerFactory = Callable[[nn.Module, str], "ChannelPruner | None"]
_TABLE: dict[type, PrunerFactory] = {}


def register_pruner(module_type: type, factory: PrunerFactory) -> None:
    """Register how to cut ``module_type`` (and subclasses); ``factory(module, side)``."""
    _TABLE[module_type] = factory


def pruner_for(module: nn.Module, side: str) -> ChannelPruner | None:
    """The pruner of ``module``'s ``side``, or ``None`` if its type is not in the table."""
    for cls in type(module).__mro__:
        if cls in _TABLE:
            return _TABLE[cls](module, side)
    return None


def _set(*attrs: str) -> Resize:
    def resize(module: nn.Module, n: int) -> None:
        for attr in attrs:
            setattr(module, attr, n)

    return resize


def _linear(module: nn.Linear, side: str) -> ChannelPruner:
    if side == "out":
        return ChannelPruner({"weight": 0, "bias": 0}, _set("out_features"))
    return ChannelPruner({"weight": 1}, _set("in_features"))


def _conv(module: nn.modules.conv._ConvNd, side: str) -> ChannelPruner:
    if module.transposed:
        raise GraphPruneError(f"transposed convolutions are not supported yet ({type(module).__name__})")
    if side == "out":
        per_group = module.out_channels // module.groups

        def resize(m: nn.Module, n: int) -> None:
            m.out_channels = n
            if m.groups > 1:  # grouped convolutions lose whole groups
                m.groups = n // per_group

        return ChannelPruner({"weight": 0, "bias": 0}, resize)
    # weight axis 1 holds the channels of one group: with groups it never changes.
    return ChannelPruner({"weight": 1} if module.groups == 1 else {}, _set("in_channels"))


def _batchnorm(module: nn.Module, side: str) -> ChannelPruner:
    stats = {"weight": 0, "bias": 0, "running_mean": 0, "running_var": 0}
    return ChannelPruner(stats, _set("num_features"))


def _layernorm(module: nn.LayerNorm, side: str) -> ChannelPruner:
    def resize(m: nn.Module, n: int) -> None:
        m.normalized_shape = (n,)

    return ChannelPruner({"weight": 0, "bias": 0}, resize)


def _groupnorm(module: nn.GroupNorm, side: str) -> ChannelPruner:
    per_group = module.num_channels // module.num_groups

    def resize(m: nn.Module, n: int) -> None:
        m.num_channels = n
        m.num_groups = n // per_group

    return ChannelPruner({"weight": 0, "bias": 0}, resize)


def _embedding(module: nn.Embedding, side: str) -> ChannelPruner:
    return ChannelPruner({"weight": 1}, _set("embedding_dim"))


register_pruner(nn.Linear, _linear)
register_pruner(nn.modules.conv._ConvNd, _conv)
register_pruner(nn.modules.batchnorm._BatchNorm, _batchnorm)
register_pruner(nn.LayerNorm, _layernorm)
register_pruner(nn.GroupNorm, _groupnorm)
register_pruner(nn.Embedding, _embedding)


def _tensors(module: nn.Module, pruner: ChannelPruner):
    for name, axis in pruner.params.items():
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor):
            yield name, tensor, axis


def cut(module: nn.Module, side: str, keep: list[int], name: str = "") -> None:
    """Keep only channels ``keep`` (sorted indices) of ``module``'s ``side``, in place.

    Raises:
        GraphPruneError: naming the module if its type has no pruner or an index is out of range.
    """
    pruner = pruner_for(module, side)
    if pruner is None:
        raise GraphPruneError(f"no pruner for '{name}' ({type(module).__name__}); register one with register_pruner")
    index = torch.as_tensor(keep, dtype=torch.long)
    for pname, tensor, axis in _tensors(module, pruner):
        if len(keep) and (index.min() < 0 or index.max() >= tensor.shape[axis]):
            raise GraphPruneError(f"indices out of range for '{name}.{pname}' axis {axis} (size {tensor.shape[axis]})")
        data = tensor.data.index_select(axis, index).clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, pname, nn.Parameter(data, requires_grad=tensor.requires_grad))
        else:
            setattr(module, pname, data)
    pruner.resize(module, len(keep))


def zero(module: nn.Module, side: str, drop: list[int]) -> int:
    """Zero channels ``drop`` of ``module``'s ``side`` (parameters only); returns elements zeroed.

    What :func:`cut` would remove, as a mask: used to check that cutting is exact.
    """
    pruner = pruner_for(module, side)
    index = torch.as_tensor(drop, dtype=torch.long)
    count = 0
    for _, tensor, axis in _tensors(module, pruner):
        if isinstance(tensor, nn.Parameter):
            with torch.no_grad():
                before = int(torch.count_nonzero(tensor))
                tensor.index_fill_(axis, index, 0.0)
                count += before - int(torch.count_nonzero(tensor))
    return count
