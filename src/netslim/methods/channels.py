"""``channels``: dependency-graph channel pruning (DepGraph) as a recipe stage, for vision and encoder models.

The settings are those of :class:`netslim.graph.api.ChannelPruneConfig` (importance, one of
``ratio`` of ``params`` or ``macs``, allocation, round_to, ...). The stage acts on a
:class:`netslim.models.tasks.ModelTask`, which supplies the example inputs and, for the
``taylor`` criterion, the loss; a task's defaults for ``params_of`` and ``round_to`` apply
unless the stage sets them.

Example recipe (``netslim compress efficientnet-lite0 --recipe r.yaml --out slim/``):

.. code-block:: yaml

    - method: channels
      ratio: 0.3
      measure: macs
      importance: taylor
      allocation: global
"""

from __future__ import annotations

from typing import ClassVar, Literal

from netslim.graph.api import ChannelPruneConfig, ChannelPruneResult, prune_channels
from netslim.methods.base import MethodConfig, Scope
from netslim.methods.registry import register_method


class ChannelsConfig(MethodConfig, ChannelPruneConfig):
    """A ``channels`` stage: :class:`ChannelPruneConfig` fields plus ``method``."""

    method: Literal["channels"] = "channels"
    scope: ClassVar[Scope] = Scope.GRAPH

    @property
    def needs_calibration(self) -> bool:
        """Only the ``taylor`` criterion needs data (the task's loss)."""
        return self.importance == "taylor"

    def for_task(self, task) -> ChannelsConfig:
        """These settings with the task's ``params_of`` and ``round_to`` where the stage leaves them unset."""
        updates = {}
        if "round_to" not in self.model_fields_set:
            updates["round_to"] = task.round_to
        if "params_of" not in self.model_fields_set and self.measure == "params":
            updates["params_of"] = task.params_of
        fields = {k: getattr(self, k) for k in self.model_fields_set}
        return ChannelsConfig(**{**fields, **updates})


@register_method("channels", ChannelsConfig)
def channels(task, cfg: ChannelsConfig) -> ChannelPruneResult:
    """Prune ``task.model`` in place; returns the plan, the before/after params and MACs, per-group widths."""
    return prune_channels(task.model, task.example_inputs, cfg.for_task(task), loss_fn=task.loss_fn)
