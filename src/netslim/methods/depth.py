"""Depth pruning: remove whole decoder blocks.

Men et al., "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
2024 (https://arxiv.org/abs/2403.03853): block influence ``BI_i = 1 - E[cos(h_i, h_{i+1})]``
over calibration tokens, lowest removed. Kim et al., "Shortened LLaMA", 2024
(https://arxiv.org/abs/2402.02834): the perplexity of the model with each block skipped,
lowest removed. Blocks are scored once on the dense model and removed in one shot. Removing
blocks keeps every remaining block intact, so the config (``num_hidden_layers``, and
``layer_types`` where present) expresses the result and plain ``from_pretrained`` loads it.

Recipe:
    - method: depth
      ratio: 0.25            # or remove: [20, 21, 22]
      score: block_influence # or perplexity
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
from pydantic import Field, model_validator

from netslim.engine.records import RunLog
from netslim.engine.stats import Stat
from netslim.engine.step import BlockStep
from netslim.errors import ConfigError
from netslim.methods.base import Handler, MethodConfig, ModelShape, Scope, Sweep
from netslim.methods.registry import register_method
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter


class DepthConfig(MethodConfig):
    """Block removal settings.

    Attributes:
        ratio: Fraction of the blocks to remove (blocks are equal in size, so this is also
            the fraction of decoder parameters); rounded to whole blocks.
        score: ``block_influence`` (ShortGPT) or ``perplexity`` (each block skipped in turn).
        score_windows: Calibration windows used for scoring.
        remove: The indices of the blocks to remove; filled in by the run (the scores'
            decision, so the saved recipe replays exactly), may also be given by hand (then
            ratio is not consulted, nothing is scored and no data is needed).
    """

    method: Literal["depth"] = "depth"
    ratio: float | None = Field(default=None, gt=0.0, lt=1.0)
    score: Literal["block_influence", "perplexity"] = "block_influence"
    score_windows: int = Field(default=16, ge=1)
    remove: tuple[int, ...] | None = None

    scope: ClassVar[Scope] = Scope.BLOCK

    @model_validator(mode="after")
    def _one_amount(self) -> DepthConfig:
        if self.remove is None and self.ratio is None:
            raise ValueError("give ratio (a fraction of the blocks) or remove (block indices)")
        if self.ignore or self.true_sequential:
            raise ValueError("depth removes whole blocks; ignore and true_sequential do not apply")
        if self.remove is not None and (len(set(self.remove)) != len(self.remove) or min(self.remove, default=0) < 0):
            raise ValueError("remove must list distinct block indices")
        return self

    @property
    def needs_calibration(self) -> bool:
        """Scoring needs data; removing given blocks does not."""
        return self.remove is None

    accepts: ClassVar[frozenset[str] | None] = None  # whole blocks go, whatever their layers are

    def preflight(self, shape: ModelShape) -> None:
        """The block count must leave at least one block; later stages see fewer blocks."""
        removed = self.count(shape.num_blocks)
        shape.num_blocks -= removed
        kept = tuple(f"{shape.adapter.block_name(i)}." for i in range(shape.num_blocks))  # renumbered after removal
        shape.layers = {n: s for n, s in shape.layers.items() if n.startswith(kept)}

    def count(self, num_blocks: int) -> int:
        """Blocks to remove from a model of ``num_blocks`` blocks."""
        if self.remove is not None:
            if max(self.remove, default=0) >= num_blocks:
                raise ConfigError(f"depth: remove names block {max(self.remove)}; the model has {num_blocks} blocks")
            n = len(self.remove)
        else:
            n = round(self.ratio * num_blocks)
        if n == 0:
            raise ConfigError(f"depth: ratio={self.ratio} of {num_blocks} blocks rounds to 0 blocks; raise it or list "
                              "the blocks to remove")
        if n >= num_blocks:
            raise ConfigError(f"depth: cannot remove {n} of {num_blocks} blocks; keep at least one")
        return n


@register_method("depth", DepthConfig)
class DepthHandler(Handler):
    """Plan: score every block on the model as it enters the stage (or take ``remove``) and
    choose the blocks; finish: record and remove them."""

    def plan(self, cfg: DepthConfig, adapter: ModelAdapter, sweep: Sweep | None) -> DepthConfig:
        """The blocks to remove, returned in the config (``remove``)."""
        n = cfg.count(adapter.num_blocks)
        self.scores: torch.Tensor | None = None
        if cfg.remove is not None:
            return cfg
        if sweep is None:
            raise ConfigError("depth pruning needs calibration data; pass calibration windows")
        stat = Stat.BLOCK_COSINE if cfg.score == "block_influence" else Stat.SKIP_LOSS
        blocks = [block for _, block in sweep(frozenset({stat}), windows=cfg.score_windows)]
        if cfg.score == "block_influence":  # ShortGPT: 1 - E[cos(h_i, h_{i+1})]
            self.scores = torch.tensor([1 - b.cosine for b in blocks])
        else:  # the calibration perplexity with the block skipped
            self.scores = torch.tensor([math.exp(b.skip_loss) for b in blocks])
        drop = sorted(torch.topk(self.scores, n, largest=False).indices.tolist())
        return cfg.model_copy(update={"remove": tuple(drop)})

    def act_block(self, cfg: DepthConfig, step: BlockStep) -> None:
        """Blocks stay until every score is read; :meth:`finish` removes them."""

    def finish(self, cfg: DepthConfig, adapter: ModelAdapter, log: RunLog) -> None:
        """Record the removed blocks with their scores, then remove them."""
        drop = sorted(cfg.remove)
        for index in drop:
            score = {} if self.scores is None else {cfg.score: float(self.scores[index])}
            log.add(adapter.block_name(index), adapter.blocks[index], cfg.method, {"removed": True, **score})
        surgery.remove_blocks(adapter, drop)
