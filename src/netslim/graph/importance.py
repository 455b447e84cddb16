"""Importance of each unit of a group (higher = keep).

Criteria (``Importance``):
    l1, l2   magnitude of every weight the unit owns, summed over the group's layers
             (Li et al. 2017, "Pruning Filters for Efficient ConvNets", arXiv:1608.08710)
    bn_scale |gamma| of the group's normalization layers, network slimming
             (Liu et al. 2017, arXiv:1708.06519); groups without a norm fall back to l1
    taylor   |w * dL/dw| summed, first-order Taylor (Molchanov et al. 2019, arXiv:1906.10771);
             needs gradients in ``.grad`` (a backward pass before scoring)
    random   the baseline: a seeded random score
"""

from __future__ import annotations

import enum
import zlib

import torch
from torch import nn

from netslim.errors import ConfigError
from netslim.graph.dependency import DependencyGraph, Group
from netslim.graph.pruners import pruner_for

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


class Importance(str, enum.Enum):
    """Which criterion scores units."""

    L1 = "l1"
    L2 = "l2"
    BN_SCALE = "bn_scale"
    TAYLOR = "taylor"
    RANDOM = "random"


def _per_channel(tensor: torch.Tensor, axis: int, criterion: Importance) -> torch.Tensor:
    """One score per index of ``axis``."""
    w = tensor.detach().float()
    if criterion is Importance.TAYLOR:
        if tensor.grad is None:
            raise ConfigError("importance 'taylor' needs gradients: pass loss_fn= or run backward before pruning")
        w = w * tensor.grad.float()
    w = w.abs() if criterion is not Importance.L2 else w.pow(2)
    return w.movedim(axis, 0).reshape(w.shape[axis], -1).sum(1)


def group_scores(graph: DependencyGraph, group: Group, criterion: Importance, seed: int = 0) -> torch.Tensor:
    """Scores of ``group.units`` in order, each summed over all layers the unit touches."""
    if criterion is Importance.RANDOM:
        gen = torch.Generator().manual_seed(seed + zlib.crc32(group.name.encode()))
        return torch.rand(len(group.units), generator=gen)
    modules = {key: graph.model.get_submodule(key[0]) for key in group.members}
    if criterion is Importance.BN_SCALE:
        members = [k for k, m in modules.items() if isinstance(m, NORMS) and getattr(m, "weight", None) is not None]
        if not members:
            criterion, members = Importance.L1, list(group.members)
    else:
        members = list(group.members)
    position = {unit: i for i, unit in enumerate(group.units)}
    scores = torch.zeros(len(group.units))
    roots = graph.roots()
    for key in members:
        module, index = modules[key], roots[key]
        tensors = pruner_for(module, key[1]).params
        if criterion is Importance.BN_SCALE:
            tensors = {"weight": 0}
        for pname, axis in tensors.items():
            tensor = getattr(module, pname, None)
            if not isinstance(tensor, nn.Parameter):
                continue
            slot = torch.tensor([position.get(unit, -1) for unit in index.tolist()], dtype=torch.long)
            ours = slot >= 0
            scores.index_add_(0, slot[ours], _per_channel(tensor, axis, criterion)[ours])
    return scores.sqrt() if criterion is Importance.L2 else scores
