"""Validated settings of the training-time sparsity callbacks (pydantic, a typo is an error)."""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from netslim.ops.masks import parse_pattern


class SparsityConfig(BaseModel):
    """What every sparsity callback shares: which weights it acts on.

    Attributes:
        method: The callback's name (a ``Literal`` in each subclass).
        version: Config schema version.
        targets: ``fnmatch`` patterns of module names to sparsify; only ``nn.Linear``,
            ``nn.Conv1d/2d/3d`` and GPT-2 ``Conv1D`` modules are ever selected.
        ignore: ``fnmatch`` patterns of module names to leave dense (e.g. the first conv and
            the classifier, which hold few weights and matter most).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str
    version: int = 1
    targets: tuple[str, ...] = ("*",)
    ignore: tuple[str, ...] = ()

    def selects(self, name: str) -> bool:
        """Whether module ``name`` matches a target and no ignore pattern."""
        match = lambda patterns: any(fnmatch.fnmatchcase(name, p) for p in patterns)  # noqa: E731
        return match(self.targets) and not match(self.ignore)


class ScheduledConfig(SparsityConfig):
    """Sparsity that follows the cubic schedule between two steps.

    Attributes:
        initial_sparsity: Sparsity at ``begin_step``.
        final_sparsity: Sparsity reached exactly at ``end_step`` and kept afterwards.
        begin_step: First optimizer step (0-based) at which masks are updated.
        end_step: Step at which ``final_sparsity`` is reached.
        frequency: Steps between mask updates.
        compare: Whether weights compete across the whole layer or within each output row
            (an output channel of a conv).
    """

    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    final_sparsity: float = Field(0.8, gt=0.0, lt=1.0)
    begin_step: int = Field(0, ge=0)
    end_step: int = Field(1000, ge=1)
    frequency: int = Field(100, ge=1)
    compare: Literal["layer", "row"] = "layer"

    @model_validator(mode="after")
    def _check_schedule(self) -> ScheduledConfig:
        if self.end_step <= self.begin_step:
            raise ValueError(f"end_step={self.end_step} must be after begin_step={self.begin_step}")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(
                f"initial_sparsity={self.initial_sparsity} exceeds final_sparsity={self.final_sparsity}; "
                "the schedule only prunes more over time"
            )
        return self


class GMPConfig(ScheduledConfig):
    """Gradual magnitude pruning (Zhu and Gupta 2017): score = |W|."""

    method: Literal["gmp"] = "gmp"


class MovementConfig(ScheduledConfig):
    """Movement pruning (Sanh et al. 2020): score = -sum over steps of W * dL/dW."""

    method: Literal["movement"] = "movement"


class RigLConfig(ScheduledConfig):
    """Prune-and-regrow: RigL at constant sparsity, GraNet when the sparsity grows.

    With ``initial_sparsity == final_sparsity`` (the default) the layer keeps its sparsity and
    every ``frequency`` steps swaps its ``drop_fraction`` smallest live weights for the same
    number of pruned ones with the largest gradient (RigL). With a lower ``initial_sparsity``
    each update first prunes to the cubic schedule by magnitude, then swaps (GraNet).
    Swapping stops at ``end_step``; the drop fraction decays to 0 as a cosine.

    Attributes:
        drop_fraction: Fraction of the live weights swapped at ``begin_step``.
    """

    method: Literal["rigl"] = "rigl"
    initial_sparsity: float | None = Field(None, ge=0.0, lt=1.0)
    compare: Literal["layer"] = "layer"
    drop_fraction: float = Field(0.3, gt=0.0, lt=1.0)

    @model_validator(mode="before")
    @classmethod
    def _constant_by_default(cls, data):
        if isinstance(data, dict) and data.get("initial_sparsity") is None:
            return {**data, "initial_sparsity": data.get("final_sparsity", cls.model_fields["final_sparsity"].default)}
        return data


class NMConfig(SparsityConfig):
    """N:M masks chosen by magnitude when training starts and kept fixed while fine-tuning.

    Attributes:
        pattern: ``"N:M"``: N non-zeros in every M consecutive inputs (for a conv, M
            consecutive input channels at the same kernel position, as NVIDIA's ASP does).
    """

    method: Literal["nm"] = "nm"
    pattern: str = "2:4"

    @field_validator("pattern")
    @classmethod
    def _semi_structured(cls, value: str) -> str:
        if parse_pattern(value) is None:
            raise ValueError("an N:M callback needs a pattern like '2:4'; use GMPConfig for unstructured")
        return value

    @property
    def nm(self) -> tuple[int, int]:
        """``(N, M)``."""
        return parse_pattern(self.pattern)
