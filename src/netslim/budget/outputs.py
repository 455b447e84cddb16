"""What a search writes besides the model: ``pareto.png`` and ``report.md`` (from ``pareto.json``)."""

from __future__ import annotations

import math
from pathlib import Path

MARKERS = {"baseline": ("s", "tab:gray"), "candidate": ("o", "tab:blue")}


def render_pareto(pareto: dict, path: Path) -> None:
    """Perplexity ratio (held-out windows) against stored megabytes, or against the measured
    prefill speed-up for a speed budget: every measured point (single-method baselines as
    squares), the solver's predicted front where there is one, the choice starred, the budget."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415  (only when a search writes)
    from matplotlib.figure import Figure  # noqa: PLC0415

    budget = pareto["budget"]
    speed = budget["kind"] == "speedup"
    x = (lambda p: p["speedup"]) if speed else (lambda p: p["bytes"] / 1e6)
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    predicted = sorted(pareto.get("front_predicted", []), key=lambda p: p["bytes"])
    if predicted:
        axis.plot([p["bytes"] / 1e6 for p in predicted], [p["ppl_ratio_predicted"] for p in predicted], "--",
                  color="tab:orange", linewidth=1, label="front predicted by the proxies")
    for kind, (marker, color) in MARKERS.items():
        chosen = [p for p in pareto["points"] if p["kind"] == kind]
        if chosen:
            axis.scatter([x(p) for p in chosen], [p["ppl_ratio"] for p in chosen], marker=marker,
                         color=color, label=f"{kind}s (measured)", zorder=3)
            if kind == "baseline":
                for p in chosen:
                    axis.annotate(p["label"].removeprefix("gptq ").removesuffix(" (uniform)"),
                                  (x(p), p["ppl_ratio"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    best = pareto["chosen"]
    axis.scatter([x(best)], [best["ppl_ratio"]], marker="*", s=220, color="tab:red", zorder=4, label="chosen")
    if budget["kind"] == "ppl":
        axis.axhline(budget["value"], color="tab:red", linewidth=0.8, linestyle=":", label=budget["text"])
    else:
        axis.axvline(budget["value"] if speed else budget["value"] / 1e6, color="tab:red", linewidth=0.8,
                     linestyle=":", label=budget["text"])
    axis.set_xlabel("prefill speed-up over dense (measured)" if speed else "stored weights (MB)")
    axis.set_ylabel("perplexity / dense (held-out calibration windows)")
    axis.set_yscale("log")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(f"{pareto['model']}: search for {budget['text']}", fontsize=10)
    figure.savefig(Path(path), dpi=110, format="png")


def render_report(pareto: dict) -> str:
    """The search's report.md: the budget, the choice, the final measurement, every point."""
    budget, best, final = pareto["budget"], pareto["chosen"], pareto["final"]
    protocol = pareto["protocol"]
    lines = [
        f"# Search: {pareto['model']} for {budget['text']}",
        "",
        f"Chosen: **{best['label']}**, {best['bytes'] / 1e6:.2f} MB stored "
        f"({', '.join(f'{n} {label}' for label, n in best['choice'].items())}).",
        "",
        f"Compressed for real (sequential GPTQ, recipe in `model/recipe.yaml`): perplexity {final['ppl']:.3f} on "
        f"{protocol['eval']} against {final['dense_ppl']:.3f} dense (x{final['ppl_ratio']:.4f}); "
        f"{final['bytes_on_disk']:,} bytes on disk, {final['bytes_predicted']:,} predicted"
        f"{'' if final['bytes_match'] else ' (MISMATCH)'}; compression {final['compress_seconds']:.0f} s, "
        f"search {pareto['search_seconds'] / 60:.1f} min in all.",
        "",
        f"Measured points (perplexity ratio on {protocol['verify_source']}; the evaluation text is never "
        "used to choose):",
        "",
        "| point | kind | MB | perplexity / dense | proxy / dense | options |",
        "|---|---|---:|---:|---:|---|",
    ]
    for p in sorted(pareto["points"], key=lambda p: p["bytes"]):
        options = ", ".join(f"{n} {label}" for label, n in p["choice"].items())
        star = " **(chosen)**" if p["label"] == best["label"] and p["bytes"] == best["bytes"] else ""
        lines.append(f"| {p['label']}{star} | {p['kind']} | {p['bytes'] / 1e6:.2f} | {p['ppl_ratio']:.4f} | "
                     f"{math.exp(p['proxy_loss']):.4f} | {options} |")
    lines += ["", "![Pareto front](pareto.png)", ""]
    return "\n".join(lines)


def render_speed_report(pareto: dict) -> str:
    """report.md of a speed budget's search: the budget, the choice, the final measurement, every point."""
    budget, best, final, protocol = pareto["budget"], pareto["chosen"], pareto["final"], pareto["protocol"]
    lines = [
        f"# Search: {pareto['model']} for {budget['text']}",
        "",
        f"Chosen: **{best['label']}** ({', '.join(f'{n} {label}' for label, n in best['choice'].items())}; "
        "u: attention units removed, n: MLP neurons removed, drop: block removed).",
        "",
        f"The model written (its recipe, `model/recipe.yaml`, replays to its tensors): "
        f"perplexity {final['ppl']:.3f} on {protocol['eval']} "
        f"against {final['dense_ppl']:.3f} dense (x{final['ppl_ratio']:.4f}); prefill x{final['speedup']:.3f} "
        f"faster than dense as reloaded from its folder ({'meets' if final['speedup_met'] else 'MISSES'} the budget); "
        f"{final['bytes_on_disk']:,} bytes on disk; compression {final['compress_seconds']:.0f} s, "
        f"search {pareto['search_seconds'] / 60:.1f} min in all.",
        "",
        f"Latency: {protocol['latency']}. Measured points (perplexity ratio on {protocol['verify_source']}; "
        "the evaluation text is never used to choose):",
        "",
        "| point | kind | speed-up (predicted) | perplexity / dense | MB | options |",
        "|---|---|---:|---:|---:|---|",
    ]
    for p in sorted(pareto["points"], key=lambda p: -p["speedup"]):
        options = ", ".join(f"{n} {label}" for label, n in p["choice"].items())
        star = " **(chosen)**" if p["label"] == best["label"] else ""
        lines.append(f"| {p['label']}{star} | {p['kind']} | {p['speedup']:.3f} ({p['speedup_predicted']:.3f}) | "
                     f"{p['ppl_ratio']:.4f} | {p['bytes'] / 1e6:.2f} | {options} |")
    lines += ["", "![Pareto front](pareto.png)", ""]
    return "\n".join(lines)
