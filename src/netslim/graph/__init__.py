"""Dependency-graph structured pruning of any PyTorch model (channels, groups, heads).

    tracing        trace.py        torch.fx, with leaves netslim can cut
    propagation    propagate.py    label tensors flow through the graph; rules.py per op kind
    graph          dependency.py   uses, units and groups (built by build.py); slots.py is the union-find
    surgery        pruners.py      module type -> parameters and axes to cut (register_pruner)
    attention      attention.py    heads as units (register_attention); hf.py for BERT encoders
    scoring        importance.py, allocation.py
    API            api.py          prune_channels, ChannelPruneConfig
    plans          plan.py         SlimPlan, save_pruned, load_pruned (JSON + safetensors)
"""

from netslim.graph.api import ChannelPruneConfig, ChannelPruneResult, prune_channels
from netslim.graph.attention import AttentionSpec, register_attention
from netslim.graph.build import build_graph
from netslim.graph.dependency import DependencyGraph, Group
from netslim.graph.errors import GraphPruneError, GraphTraceError
from netslim.graph.plan import SlimPlan, load_pruned, save_pruned
from netslim.graph.pruners import ChannelPruner, register_pruner
from netslim.graph.rules import register_rule

__all__ = [
    "AttentionSpec",
    "ChannelPruneConfig",
    "ChannelPruneResult",
    "ChannelPruner",
    "DependencyGraph",
    "GraphPruneError",
    "GraphTraceError",
    "Group",
    "SlimPlan",
    "build_graph",
    "load_pruned",
    "prune_channels",
    "register_attention",
    "register_pruner",
    "register_rule",
    "save_pruned",
]
