"""The compression report: one typed :class:`Report` for every kind of model, written as
``report.json`` (machine-readable) and ``report.md`` (for people).

Language models are measured by perplexity under the evaluation protocol, vision and encoder
models by their task scores, MACs and CPU latency; both sides of a report (``baseline`` and
``compressed``) are :class:`Measurement` objects with the fields their kind has, and the
per-layer records (causal LMs) or per-group cuts (graph pruning) follow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# The measurement fields each kind of report has (report.json lists exactly these, ``null`` if unknown).
KINDS = {"causal_lm": ("ppl", "params", "nonzero_params", "size_bytes"),
         "channels": ("params", "macs", "latency_ms", "scores", "size_bytes")}


@dataclass
class Measurement:
    """One side of a report: the model before or after compression.

    Attributes:
        params: Parameters.
        size_bytes: Bytes of the weights (on disk once the folder is written).
        ppl: Perplexity (causal LMs; ``None`` when not finite).
        nonzero_params: Parameters that are not exactly zero (causal LMs).
        macs: Multiply-accumulates of one example input (graph pruning).
        latency_ms: Median CPU latency of one example input (graph pruning).
        scores: Task scores by name (graph pruning).
    """

    params: int
    size_bytes: int | None = None
    ppl: float | None = None
    nonzero_params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    scores: dict[str, float] | None = None


@dataclass
class Report:
    """What a compression job measured and decided.

    Attributes:
        kind: ``causal_lm`` or ``channels`` (vision and encoder models).
        model: The source the job read.
        recipe: The resolved stages (per-block and per-layer choices spelled out).
        protocol: How quality was measured (dataset, windows, tokens; task and latency protocol).
        baseline / compressed: The measurements before and after.
        compress_seconds: Wall time of the compression itself.
        peak_rss_bytes: Peak resident memory of the process.
        layers: Per-layer records (causal LMs, :class:`netslim.engine.records.LayerRecord`
            as JSON) or per-group cuts (graph pruning: group, units, kept).
        storage: The storage summary of the written folder (set by the folder writer).
        recovery: One summary per ``recover`` stage (mode, windows, steps, tokens, losses, seconds).
    """

    kind: Literal["causal_lm", "channels"]
    model: str
    recipe: list[dict]
    protocol: dict
    baseline: Measurement
    compressed: Measurement
    compress_seconds: float
    peak_rss_bytes: int
    layers: list[dict] = field(default_factory=list)
    storage: dict | None = None
    recovery: list[dict] = field(default_factory=list)

    @property
    def params_removed(self) -> float:
        """Fraction of the parameters removed."""
        return 1 - self.compressed.params / self.baseline.params

    @property
    def macs_removed(self) -> float | None:
        """Fraction of the MACs removed (graph pruning)."""
        if self.baseline.macs is None or self.compressed.macs is None:
            return None
        return 1 - self.compressed.macs / self.baseline.macs

    @property
    def speedup(self) -> float | None:
        """Dense over compressed latency (graph pruning)."""
        if self.baseline.latency_ms is None or self.compressed.latency_ms is None:
            return None
        return self.baseline.latency_ms / self.compressed.latency_ms

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``): each side with its kind's fields, non-finite numbers as ``null``."""
        out = asdict(self)
        for side in ("baseline", "compressed"):
            out[side] = {k: out[side][k] for k in KINDS[self.kind]}
        derived = {"params_removed": self.params_removed, "macs_removed": self.macs_removed, "speedup": self.speedup}
        out.update({k: v for k, v in derived.items() if v is not None})
        for key in ("storage", "recovery"):
            if not out[key]:
                del out[key]
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        """Read ``report.json`` back (derived fields are recomputed, not read).

        Raises:
            KeyError, TypeError, ValueError: for a dict that is not a report.
        """
        if data.get("kind", "causal_lm") not in KINDS:
            raise ValueError(f"unknown report kind {data.get('kind')!r}")
        names = set(Measurement.__dataclass_fields__)
        sides = {side: Measurement(**{k: v for k, v in data[side].items() if k in names})
                 for side in ("baseline", "compressed")}
        return cls(kind=data.get("kind", "causal_lm"), model=data["model"], recipe=list(data["recipe"]),
                   protocol=dict(data["protocol"]), compress_seconds=float(data["compress_seconds"]),
                   peak_rss_bytes=int(data["peak_rss_bytes"]), layers=list(data.get("layers", data.get("groups", []))),
                   storage=data.get("storage"), recovery=list(data.get("recovery", [])), **sides)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (a NaN or infinite perplexity) replaced by
    ``None``, so that ``json.dumps(..., allow_nan=False)`` writes valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def render_markdown(typed: Report) -> str:
    """A readable summary of a :class:`Report` (``report.md``)."""
    report = typed.as_dict()
    if typed.kind == "channels":
        return _render_channels(report)
    proto = report["protocol"]
    calib = proto.get("calibration") or {}
    base, comp = report["baseline"], report["compressed"]
    lines = [
        *_head(report),
        f"- evaluation: {proto['dataset']}, seqlen {proto['seqlen']}, {proto['windows']} non-overlapping "
        f"windows ({proto['tokens']} tokens, {proto['predicted_tokens']} predicted), "
        f"BOS per window: {proto['bos_per_window']}; ppl = exp(mean NLL of predicted tokens)",
        f"- calibration: {calib.get('source', 'none (data-free)')}, {calib.get('windows', 0)} windows of "
        f"{calib.get('seqlen', '-')} tokens, seed {calib.get('seed', '-')}",
        *_execution_line(proto.get("execution")),
        "",
        "## Results",
        "",
        "| | perplexity | parameters | non-zero parameters | size (MB) |",
        "|---|---:|---:|---:|---:|",
        _row("baseline", base),
        _row("compressed", comp),
        "",
        f"Compression took {report['compress_seconds']:.1f} s; peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB.",
        *[_recovery_line(r) for r in report.get("recovery", [])],
        "",
        "## Layers",
        "",
        "| layer | shape | sparsity |",
        "|---|---|---:|",
        *[f"| {r['name']} | {'x'.join(map(str, r.get('shape', [])))} | {r.get('sparsity', 0):.4f} |" for r in report["layers"]],
        "",
        *_fallback_lines(report["layers"]),
    ]
    return "\n".join(lines)


def _fallback_lines(layers: list[dict[str, Any]]) -> list[str]:
    """The layers no calibration token reached (routed experts the router never picked), if any."""
    unreached = [r["name"] for r in layers if r.get("calibration_fallback")]
    if not unreached:
        return []
    return ["## Calibration fallbacks", "",
            f"{len(unreached)} layers saw no calibration token (routed experts the router never picked) and were "
            "compressed from their weights alone, as if their inputs were white: magnitude pruning for Wanda and "
            "SparseGPT, round-to-nearest for GPTQ, a plain SVD for SVD-LLM.", "",
            *[f"- {name}" for name in unreached], ""]


def _execution_line(execution: dict | None) -> list[str]:
    """How the job ran (reports written before netslim recorded it have none)."""
    if not execution:
        return []
    return [f"- execution: {execution['device_name']} ({execution['device']}), {execution['dtype']}, batch "
            f"{execution['batch_size']} windows per forward, {execution['threads']} CPU threads; statistics in float32"]


def _recovery_line(summary: dict[str, Any]) -> str:
    return (f"Recovery ({summary['mode']}, loss {summary['loss']}, {summary['select']} windows of {summary['data']}): "
            f"{summary['steps']} steps, {summary['tokens']:,} tokens, {summary['trained_params']:,} parameters trained, "
            f"training loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}, {summary['seconds']:.0f} s"
            f"{', ' + summary['precision'] if 'precision' in summary else ''}.")


def _head(report: dict[str, Any]) -> list[str]:
    """The title and the recipe, up to the first line of the protocol section."""
    return [
        f"# netslim report: {report['model']}",
        "",
        "## Recipe",
        "",
        *[f"- `{_stage(s)}`" for s in report["recipe"]],
        "",
        "## Protocol",
        "",
    ]


def _stage(stage: dict[str, Any]) -> str:
    """One line per stage; long per-block or per-layer settings are summarized (recipe.yaml has them)."""
    def shown(value: Any) -> str:
        if isinstance(value, (list, tuple, dict)) and len(value) > 6:
            return f"<{len(value)} {'layers' if isinstance(value, dict) else 'blocks'}, see recipe.yaml>"
        return str(value)

    return ", ".join(f"{k}: {shown(v)}" for k, v in stage.items() if v not in ((), [], None))


def _row(label: str, side: dict[str, Any]) -> str:
    ppl = "n/a (not finite)" if side["ppl"] is None else f"{side['ppl']:.3f}"
    return (
        f"| {label} | {ppl} | {side['params']:,} | {side['nonzero_params']:,} | "
        f"{side['size_bytes'] / 1e6:.1f} |"
    )


def _render_channels(report: dict[str, Any]) -> str:
    base, comp = report["baseline"], report["compressed"]
    metrics = list(base["scores"])
    size = comp.get("size_bytes")
    lines = [
        *_head(report),
        *[f"- {key}: {text}" for key, text in report["protocol"].items()],
        "",
        "## Results",
        "",
        "| | parameters | MACs | CPU latency (ms) | " + " | ".join(metrics) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(metrics),
        *[f"| {label} | {side['params']:,} | {side['macs']:,} | {side['latency_ms']:.2f} | "
          + " | ".join(f"{side['scores'][m]:.4f}" for m in metrics) + " |"
          for label, side in (("dense", base), ("pruned", comp))],
        "",
        f"Removed {report['params_removed']:.1%} of the parameters and {report['macs_removed']:.1%} of the MACs; "
        f"{report['speedup']:.2f}x faster. Pruning took {report['compress_seconds']:.1f} s; peak RSS "
        f"{report['peak_rss_bytes'] / 2**20:.0f} MiB." + (f" Weights on disk: {size / 1e6:.2f} MB." if size else ""),
        "",
        "## Groups",
        "",
        "| group | units | kept |",
        "|---|---:|---:|",
        *[f"| {g['group']} | {g['units']} | {g['kept']} |" for g in report["layers"]],
        "",
    ]
    return "\n".join(lines)
