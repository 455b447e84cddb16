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
import torch.nn.functional as F
from pydantic import Field, model_validator

from netslim.data.windows import TokenWindows
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.stats import Stat
from netslim.errors import ConfigError
from netslim.methods.base import MethodConfig, ModelShape, Scope
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

    scope: ClassVar[Scope] = Scope.MODEL
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})

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


@torch.no_grad()
def block_states(adapter: ModelAdapter, ids: torch.Tensor) -> tuple[list[torch.Tensor], list]:
    """Hidden states entering every block and leaving the last one (``num_blocks + 1`` tensors)."""
    hidden, calls = capture_block_inputs(adapter, ids)
    states = [hidden]
    for index, block in enumerate(adapter.blocks):
        states.append(run_block(block, states[-1], calls[index]))
    return states, calls


def block_influence(states: list[torch.Tensor]) -> torch.Tensor:
    """``1 - mean cosine(input, output)`` of each block over all tokens (ShortGPT)."""
    scores = [
        1 - F.cosine_similarity(a.float().flatten(0, 1), b.float().flatten(0, 1), dim=-1).mean()
        for a, b in zip(states[:-1], states[1:])
    ]
    return torch.stack(scores)


def _nll(adapter: ModelAdapter, hidden: torch.Tensor, ids: torch.Tensor) -> float:
    logits = adapter.lm_head(adapter.final_norm(hidden))[:, :-1].float()
    return float(F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten().to(logits.device)))


@torch.no_grad()
def skip_perplexity(adapter: ModelAdapter, states: list[torch.Tensor], calls: list, ids: torch.Tensor) -> torch.Tensor:
    """Perplexity of the model with each block skipped in turn (the others dense)."""
    scores = []
    for skipped in range(adapter.num_blocks):
        hidden = states[skipped]
        for index in range(skipped + 1, adapter.num_blocks):
            hidden = run_block(adapter.blocks[index], hidden, calls[index])
        scores.append(math.exp(_nll(adapter, hidden, ids)))
    return torch.tensor(scores)


@register_method("depth", DepthConfig)
def depth(adapter: ModelAdapter, calibration: TokenWindows | None, cfg: DepthConfig, log) -> DepthConfig:
    """Score every block on the dense model and remove the least important ones (or the
    blocks ``remove`` names); return the config with the removed blocks spelled out."""
    n = cfg.count(adapter.num_blocks)
    if cfg.remove is not None:
        drop, scores = sorted(cfg.remove), None
    else:
        if calibration is None:
            raise ConfigError("depth pruning needs calibration data; pass calibration windows")
        ids = calibration.ids[: cfg.score_windows]
        states, calls = block_states(adapter, ids)
        scores = block_influence(states) if cfg.score == "block_influence" else skip_perplexity(adapter, states, calls, ids)
        del states
        drop = sorted(torch.topk(scores, n, largest=False).indices.tolist())
    for index in drop:
        extra = {"removed": True} if scores is None else {"removed": True, cfg.score: float(scores[index])}
        log.add(adapter.block_name(index), adapter.blocks[index], cfg.method, extra)
    surgery.remove_blocks(adapter, drop)
    return cfg.model_copy(update={"remove": tuple(drop)})
