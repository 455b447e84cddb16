"""The compression report: ``report.json`` (machine-readable) and ``report.md`` (for people)."""

from __future__ import annotations

import math
from typing import Any


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


def render_markdown(report: dict[str, Any]) -> str:
    """A readable summary of a report dict built by :func:`netslim.job.compress_job` or
    :func:`netslim.channel_job.channel_job` (``kind: channels``)."""
    if report.get("kind") == "channels":
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
        "",
        "## Results",
        "",
        "| | perplexity | parameters | non-zero parameters | size (MB) |",
        "|---|---:|---:|---:|---:|",
        _row("baseline", base),
        _row("compressed", comp),
        "",
        f"Compression took {report['compress_seconds']:.1f} s; peak RSS {report['peak_rss_bytes'] / 2**20:.0f} MiB.",
        "",
        "## Layers",
        "",
        "| layer | shape | sparsity |",
        "|---|---|---:|",
        *[f"| {r['name']} | {'x'.join(map(str, r.get('shape', [])))} | {r.get('sparsity', 0):.4f} |" for r in report["layers"]],
        "",
    ]
    return "\n".join(lines)


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
        *[f"| {g['group']} | {g['units']} | {g['kept']} |" for g in report["groups"]],
        "",
    ]
    return "\n".join(lines)
