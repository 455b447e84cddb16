"""``report.png``: where a compression spent its budget, layer by layer.

Two panels over the projections in model order (ticks at the first projection of each block):

- what each layer keeps: its sparsity (fraction of exact zeros), its bits per weight and the
  share of its parameters a low-rank factorization kept, each where the layer has it;
- what it cost: the error each method reports for the layer (GPTQ and SparseGPT's OBS loss,
  RTN's relative weight error, the share of whitened energy a factorization dropped), on a
  log scale.

The figure is drawn with matplotlib's object API on an Agg canvas, so writing a report never
touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import re
from pathlib import Path

KEPT = {  # series of the upper panel: label -> value of a layer record (None where it has none)
    "sparsity": lambda r: r.get("sparsity") if r.get("sparsity") else None,
    "bits / 16": lambda r: r["bits"] / 16 if r.get("bits") else None,
    "rank: params kept": lambda r: (r["params_factorized"] / r["params_dense"]
                                    if r.get("params_factorized") and r.get("params_dense") else None),
}
ERRORS = {
    "OBS loss (GPTQ, SparseGPT)": "obs_loss",
    "relative weight error (RTN)": "relative_weight_error",
    "dropped energy share (low rank)": "dropped_energy_share",
}


def layer_series(layers: list[dict]) -> dict[str, list[float | None]]:
    """Every series the figure draws (one value or ``None`` per layer record), empty ones left out."""
    series = {label: [value(r) for r in layers] for label, value in KEPT.items()}
    series |= {label: [r.get(key) or None for r in layers] for label, key in ERRORS.items()}
    return {label: values for label, values in series.items() if any(v is not None for v in values)}


def render_plot(layers: list[dict], path: Path, title: str = "") -> dict[str, list[float | None]]:
    """Write the per-layer figure of ``layers`` (report records) to ``path``; return its series.

    Nothing is written when no record has a value to show (a depth- or width-only recipe).
    """
    series = layer_series(layers)
    if not series:
        return series
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (only when a report is written)
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(max(8.0, len(layers) * 0.06), 6.5), layout="constrained")
    FigureCanvasAgg(figure)
    kept, errors = figure.subplots(2, 1, sharex=True)
    x = list(range(len(layers)))
    for axis, labels in ((kept, KEPT), (errors, ERRORS)):
        for label in labels:
            if label in series:
                values = [float("nan") if v is None else v for v in series[label]]
                axis.plot(x, values, marker=".", linewidth=0.8, markersize=3, label=label)
        axis.grid(alpha=0.3)
        if any(label in series for label in labels):
            axis.legend(fontsize=8, loc="best")
    kept.set_ylabel("share of the layer")
    kept.set_ylim(0, 1.05)
    errors.set_ylabel("error")
    if any(label in series for label in ERRORS):
        errors.set_yscale("log")
    blocks = [_block(r["name"]) for r in layers]
    ticks = [i for i, b in enumerate(blocks) if b is not None and (i == 0 or blocks[i - 1] != b)]
    errors.set_xticks(ticks, [str(blocks[i]) for i in ticks], fontsize=7)
    errors.set_xlabel("block (projections in model order)")
    figure.suptitle(title or "per-layer compression", fontsize=10)
    figure.savefig(Path(path), dpi=110, format="png")  # inside the output's temporary folder
    return series


def _block(name: str) -> int | None:
    found = re.search(r"\.(\d+)\.", name)
    return int(found.group(1)) if found else None
