"""The record of a run: what every stage decided, per layer or block.

A handler reports its decisions for one module as keyword fields (``bits=4, group_size=128``);
:meth:`RunLog.add` files them into that module's :class:`LayerRecord`, whose fields are typed
and documented here, so the report, ``report.json`` and the folder writer read one schema.
A field no built-in method uses (a plugin's) lands in :attr:`LayerRecord.extra` rather than
being dropped. Records read like mappings too (``record["bits"]``, ``"rank" in record``), and
:meth:`LayerRecord.as_dict` gives the JSON form, without the fields left unset.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from netslim.models.adapter import linear_weight


@dataclass
class LayerRecord:
    """What the stages of a run did to one projection (or, for block methods, one block).

    Attributes:
        name: Full module name.
        methods: The stages that acted on it, in order.
        shape: Its (out, in) weight shape after the run.
        sparsity: Fraction of exact zeros in its weight after the run.
        pattern / target_sparsity: Pruning: ``unstructured`` or ``N:M``, and the sparsity asked
            of this layer (its block's under OWL).
        bits / group_size / sym / act_order: Quantization grid of its codes.
        gguf / gguf_fallback: The GGUF block type whose fitted grid the codes are on
            (``q4_0`` ...), if any, and why it is not the requested one (a K-quant's fallback).
        hessian_fallback / damp: Which step of the Cholesky fallback chain GPTQ or SparseGPT
            needed, and the damping actually used (fraction of the mean diagonal).
        obs_loss: The OBS objective GPTQ or SparseGPT left (sum of ``err^2 / [H^-1]_qq``).
        relative_weight_error: RTN's ``||W_q - W|| / ||W||``.
        rank / params_dense / params_factorized / dropped_energy_share: Low rank: the rank
            kept, parameters before and after, and the share of (whitened) spectral energy
            dropped.
        whitening_fallback / whitening_damping: SVD-LLM's Cholesky fallback step and damping.
        compensation_rank: EoRA's rank of the error correction.
        heads / kv_heads / intermediate / removed_heads / removed_neurons: Width: the block's
            attention heads, key-value heads and MLP width after pruning, and what went.
        removed / block_influence / perplexity: Depth: the block was removed, with its score.
        d_in / d_mid / d_out / params: SliceGPT: the block's residual widths and parameters.
        calibration_tokens: Calibration tokens that reached the layer's input (a routed
            expert sees only the tokens routed to it).
        calibration_fallback: Why the layer was compressed without its input statistics (none
            reached it), if it was.
        extra: Fields of methods registered outside netslim.
    """

    name: str
    methods: list[str] = field(default_factory=list)
    shape: list[int] | None = None
    sparsity: float | None = None
    pattern: str | None = None
    target_sparsity: float | None = None
    bits: int | None = None
    group_size: int | None = None
    sym: bool | None = None
    act_order: bool | None = None
    gguf: str | None = None
    gguf_fallback: str | None = None
    hessian_fallback: str | None = None
    damp: float | None = None
    obs_loss: float | None = None
    relative_weight_error: float | None = None
    rank: int | None = None
    params_dense: int | None = None
    params_factorized: int | None = None
    dropped_energy_share: float | None = None
    whitening_fallback: str | None = None
    whitening_damping: float | None = None
    compensation_rank: int | None = None
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    removed_heads: list[int] | None = None
    removed_neurons: int | None = None
    removed: bool | None = None
    block_influence: float | None = None
    perplexity: float | None = None
    d_in: int | None = None
    d_mid: int | None = None
    d_out: int | None = None
    params: int | None = None
    calibration_tokens: int | None = None
    calibration_fallback: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def update(self, values: dict[str, Any]) -> None:
        """Set the named fields; names that are not fields go to :attr:`extra`."""
        for key, value in values.items():
            if key in _FIELDS:
                setattr(self, key, value)
            else:
                self.extra[key] = value

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: every field that is set, :attr:`extra` merged in."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out = {k: v for k, v in out.items() if v is not None}
        return {**out, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerRecord:
        """Inverse of :meth:`as_dict` (checkpoints store records as JSON)."""
        record = cls(str(data["name"]))
        record.update({k: v for k, v in data.items() if k != "name"})
        return record

    def __getitem__(self, key: str) -> Any:
        """A field's value (``None`` when unset) or an extra; ``KeyError`` for anything else."""
        if key in _FIELDS:
            return getattr(self, key)
        if key in self.extra:
            return self.extra[key]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style read of a set field or an extra."""
        if key in _FIELDS:
            value = getattr(self, key)
            return default if value is None else value
        return self.extra.get(key, default)

    def __contains__(self, key: str) -> bool:
        return self.get(key, _MISSING) is not _MISSING


_MISSING = object()
_FIELDS = {f.name for f in fields(LayerRecord)} - {"extra"}


class RunLog:
    """The records of a run, one per module, in the order modules were first touched."""

    def __init__(self) -> None:
        self.records: dict[str, LayerRecord] = {}

    def add(self, name: str, module: nn.Module, method: str, values: dict | None) -> None:
        """Record that ``method`` acted on ``name``; shape and sparsity are measured from its
        weight now, then ``values`` (the handler's decisions) are filed."""
        record = self.records.setdefault(name, LayerRecord(name))
        weight = linear_weight(module) if hasattr(module, "weight") else None
        if weight is not None:
            record.shape = list(weight.shape)
            record.sparsity = float((weight == 0).sum()) / weight.numel()
        record.methods.append(method)
        record.update(values or {})

    def as_list(self) -> list[LayerRecord]:
        """Records in the order modules were first touched."""
        return list(self.records.values())

    def merge(self, records: list[LayerRecord]) -> None:
        """Add the records of a later run on the same model: methods appended, values updated."""
        for other in records:
            record = self.records.setdefault(other.name, LayerRecord(other.name))
            record.methods.extend(other.methods)
            record.update({k: v for k, v in other.as_dict().items() if k not in ("name", "methods")})

    def restore(self, records: list[dict]) -> None:
        """Replace the records by those of a checkpoint (their JSON form)."""
        self.records = {r["name"]: LayerRecord.from_dict(r) for r in records}
