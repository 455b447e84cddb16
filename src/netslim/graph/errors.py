"""Errors of channel pruning, each a one-line :class:`NetslimError`."""

from __future__ import annotations

from netslim.errors import NetslimError


class GraphTraceError(NetslimError, RuntimeError):
    """The model could not be traced; the message names the operation."""


class GraphPruneError(NetslimError, ValueError):
    """A cut cannot be made (unknown layer type, bad indices, a pruned model that no longer runs)."""
