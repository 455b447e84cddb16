"""Budget search on smollm2-135m: the searched model against every single-method configuration.

Budgets (small protocol; the search measures its candidates on 16 held-out windows of
WikiText-2 valid, never on the test text, then the chosen model is compressed for real and
evaluated on the first 80 test windows):

- ``size``: stored weights at most the 16-bit embeddings, norms and head plus 0.28x the fp16
  bytes of the decoder projections (about 4.5 bits per decoder weight);
- ``ppl``: perplexity at most 1.25x dense, at the smallest size;
- ``speedup``: prefill at least 1.5x faster than dense (measured by the search, with its
  threads, beside the dense model), at the lowest perplexity.

Each searched model is compared with every single-method configuration of
``benchmarks/results`` (second_order, pruning, lowrank, structured, slicegpt: PyTorch runtime)
on the other axes: for ``size``, the perplexity of every configuration that fits the size;
for ``ppl``, the size of every configuration within the perplexity; for ``speedup``, both
perplexity and size of every configuration whose prefill speed-up (measured by its own
benchmark with 1 thread) reaches the budget; the searched model is timed again with 1 thread
beside the dense model, as those benchmarks time theirs. The search's cost is stated against
the one compression it ends with, measured in the same run; the speed budget's (whose final
compression is a width cut, not GPTQ) also against one GPTQ 4-bit g128 compression of the
model under the small protocol, timed right after the search in the same process.

    python benchmarks/search.py [--only size ppl speedup] [--threads 2]

A search keeps its statistics and measured candidates in the netslim cache, so a second budget
on the same model and protocol reuses the first's (the second budget's time is then stated
with that reuse).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

import netslim
from netslim.budget.space import decoder_projections, fixed_bytes
from netslim.models.adapter import ModelAdapter

from _common import (
    RESULTS, SMALL_PROTOCOL, calib_windows, eval_windows, protocol_line, saved_results, side_by_side_latency,
    write_results,
)

SIZE_SHARE = 0.28  # of the fp16 bytes of the decoder projections
PPL_RATIO = 1.25
SPEEDUP = 1.5
SINGLE_METHOD = ("second_order", "pruning", "lowrank", "structured", "slicegpt")  # PyTorch-runtime results


def budgets() -> dict[str, str]:
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    projections = decoder_projections(ModelAdapter.from_model(lm.model))
    decoder = sum(2 * p.numel() for m in projections.values() for p in m.parameters())
    size = fixed_bytes(lm.model, projections) + int(SIZE_SHARE * decoder)
    return {"size": f"size={size}B", "ppl": f"ppl={PPL_RATIO}x", "speedup": f"speedup={SPEEDUP}x"}


def single_method_rows() -> dict[str, dict]:
    """Every measured configuration of the PyTorch-runtime benchmarks: name -> size_bytes, ppl."""
    rows = {}
    for name in SINGLE_METHOD:
        saved = saved_results(name)
        for key, row in saved.get("results", {}).items():
            if key != "dense" and isinstance(row, dict) and "ppl" in row and "size_bytes" in row:
                rows[f"{name}: {key}"] = {"size_bytes": row["size_bytes"], "ppl": row["ppl"],
                                          "prefill_speedup": _speedup(row)}
    return rows


def _speedup(row: dict) -> float | None:
    """A row's measured prefill speed-up over dense, where its benchmark timed one."""
    if "latency" in row:
        return row["latency"].get("prefill_speedup")
    if row.get("prefill_s") and row.get("dense_prefill_s"):
        return row["dense_prefill_s"] / row["prefill_s"]
    return None


def compare(kind: str, final: dict, speedup: float | None, budget: float, others: dict[str, dict],
            dense_ppl: float | None = None) -> dict:
    """Whether the searched model is strictly better, on the other axes, than every configuration
    within the budget (``speedup``: the searched model's, timed as the configurations were)."""
    if kind == "size":
        within = {k: r for k, r in others.items() if r["size_bytes"] <= budget}
        beaten = {k: final["ppl"] < r["ppl"] for k, r in within.items()}
    elif kind == "speedup":
        within = {k: r for k, r in others.items() if (r["prefill_speedup"] or 0) >= budget}
        beaten = {k: final["ppl"] < r["ppl"] and final["bytes_on_disk"] < r["size_bytes"] and speedup >= budget
                  for k, r in within.items()}
    else:
        within = {k: r for k, r in others.items() if r["ppl"] <= budget * dense_ppl}
        beaten = {k: final["bytes_on_disk"] < r["size_bytes"] for k, r in within.items()}
    best = (min(within.items(), key=lambda kv: kv[1]["size_bytes" if kind == "ppl" else "ppl"]) if within else None)
    return {"within_budget": len(within), "beats_all": all(beaten.values()), "beaten": beaten,
            "best_single": None if best is None else {"name": best[0], **best[1]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, choices=["size", "ppl", "speedup"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    protocol = netslim.Protocol(seqlen=SMALL_PROTOCOL["seqlen"], calib=SMALL_PROTOCOL["calib"],
                                calib_windows=SMALL_PROTOCOL["calib_windows"], eval=SMALL_PROTOCOL["eval"],
                                eval_windows=SMALL_PROTOCOL["eval_windows"], seed=SMALL_PROTOCOL["seed"])
    saved = saved_results("search", SMALL_PROTOCOL)
    rows = saved.get("results", {})
    others = single_method_rows()
    for kind, budget in budgets().items():
        if args.only and kind not in args.only:
            continue
        out = Path(tempfile.mkdtemp(prefix="netslim-search-")) / "out"
        start = time.perf_counter()
        result = netslim.search(SMALL_PROTOCOL["model"], budget, out, protocol, progress=True)
        seconds = time.perf_counter() - start
        pareto, final = result.pareto, result.pareto["final"]
        value = pareto["budget"]["value"]
        shutil.copy(out / "pareto.png", RESULTS / f"search_{kind}.png")
        common = {"budget": budget, "seconds": seconds, "work_seconds": pareto["work_seconds"], "final": final,
                  "chosen": result.chosen, "points": pareto["points"], "peak_rss_bytes": pareto["peak_rss_bytes"],
                  "cost_vs_final_compression": pareto["work_seconds"] / final["compress_seconds"]}
        if kind == "speedup":  # timed again as the single-method benchmarks time theirs: 1 thread, 1 x 512 tokens
            latency = _one_thread_latency(out / "model")
            gptq = _one_gptq_seconds()
            rows[kind] = {**common, "latency_table": pareto["latency_table"], "latency_1_thread": latency,
                          "gptq_seconds": gptq, "cost_vs_one_gptq": pareto["work_seconds"] / gptq,
                          "comparison": compare(kind, final, latency["prefill_speedup"], value, others)}
        else:
            rows[kind] = {
                **common, "fixed_bytes": pareto["fixed_bytes"],
                "decoder_bits_per_weight": 8 * (final["bytes_on_disk"] - pareto["fixed_bytes"]) / _decoder_weights(),
                "cost_vs_one_gptq": pareto["work_seconds"] / final["compress_seconds"],
                "comparison": compare(kind, final, None, value, others, final["dense_ppl"]),
            }
        write_results("search", {"protocol": SMALL_PROTOCOL, "threads": args.threads, "results": rows},
                      table(rows, args.threads))
        shutil.rmtree(out.parent, ignore_errors=True)


def _one_gptq_seconds() -> float:
    """Seconds of one GPTQ 4-bit g128 compression of the model with the protocol's calibration windows."""
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    windows = calib_windows(lm, SMALL_PROTOCOL)
    start = time.perf_counter()
    netslim.compress(lm, {"method": "gptq", "bits": 4, "group_size": 128}, windows, progress=False)
    return time.perf_counter() - start


def _one_thread_latency(folder: Path) -> dict:
    """Prefill of the first test window (and 64 generated tokens), dense and searched interleaved, 1 thread."""
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    prompt = eval_windows(lm).ids[:1]
    return side_by_side_latency(lm.model.eval(), netslim.load(folder).model.eval(), "searched", prompt, repeats=5,
                                threads=1)


def _decoder_weights() -> int:
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    return sum(m.weight.numel() for m in decoder_projections(ModelAdapter.from_model(lm.model)).values())


def table(rows: dict, threads: int) -> str:
    lines = ["| budget | chosen | MB on disk (predicted) | decoder bits/weight | test ppl | vs dense | best single method "
             "within the budget | beats all | search min | x one GPTQ run |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for kind, row in rows.items():
        if kind == "speedup":
            continue
        final, comparison = row["final"], row["comparison"]
        best = comparison["best_single"]
        best_text = "-" if best is None else f"{best['name']} ({best['size_bytes'] / 1e6:.1f} MB, ppl {best['ppl']:.2f})"
        options = ", ".join(f"{n} {label}" for label, n in row["chosen"]["choice"].items())
        lines.append(f"| {row['budget']} | {options} | {final['bytes_on_disk'] / 1e6:.2f} "
                     f"({final['bytes_predicted'] / 1e6:.2f}) | {row['decoder_bits_per_weight']:.2f} | {final['ppl']:.2f} | "
                     f"{final['ppl_ratio']:.3f}x | {best_text} | {'yes' if comparison['beats_all'] else 'NO'} "
                     f"({comparison['within_budget']} within) | {row['work_seconds'] / 60:.1f} | {row['cost_vs_one_gptq']:.2f} |")
    lines.append(protocol_line(SMALL_PROTOCOL) + f". CPU threads: {threads}. The search chooses per projection among GPTQ "
                 "(act-order) grids of 3, 4, 8 bits x groups 32, 64, 128 and 16-bit float, on proxies from one "
                 "statistics pass, measures its candidates on 16 held-out windows of WikiText-2 valid, then compresses "
                 "the choice for real (sequential GPTQ) and evaluates it on the test windows. 'x one GPTQ run': the "
                 "search's whole time over that final GPTQ compression's time, same run. Single methods: every "
                 "configuration in benchmarks/results (second_order, pruning, lowrank, structured, slicegpt) within the "
                 "budget; 'beats all': strictly better on the other axis than each of them. 'Search min': the compute "
                 "the result rests on (statistics, proxies, every measured point, the final compression with its two "
                 "evaluations), whether done in this run or reused from the cache of an earlier one.")
    if "speedup" in rows:
        lines += ["", *speed_table(rows["speedup"])]
    return "\n".join(lines)


def speed_table(row: dict) -> list[str]:
    final, comparison, latency = row["final"], row["comparison"], row["latency_1_thread"]
    best = comparison["best_single"]
    best_text = "-" if best is None else (f"{best['name']} (x{best['prefill_speedup']:.2f}, {best['size_bytes'] / 1e6:.1f} MB, "
                                          f"ppl {best['ppl']:.2f})")
    options = ", ".join(f"{n} {label}" for label, n in row["chosen"]["choice"].items())
    threads = row["latency_table"]["threads"]
    gptq_text = "-" if row.get("cost_vs_one_gptq") is None else f"{row['cost_vs_one_gptq']:.2f}"
    return [
        f"| budget | chosen (per block) | prefill speed-up, search ({threads} threads) / 1 thread | MB on disk | test ppl "
        "| vs dense | best single method within the budget | beats all | search min | x its final compression "
        "| x one GPTQ run |",
        "|---|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
        f"| {row['budget']} | {options} | {final['speedup']:.2f}x / {latency['prefill_speedup']:.2f}x | "
        f"{final['bytes_on_disk'] / 1e6:.2f} | {final['ppl']:.2f} | {final['ppl_ratio']:.3f}x | {best_text} | "
        f"{'yes' if comparison['beats_all'] else 'NO'} ({comparison['within_budget']} within) | "
        f"{row['work_seconds'] / 60:.1f} | {row['cost_vs_final_compression']:.2f} | {gptq_text} |",
        "Speed budget: per block, attention units (key-value groups) and MLP neurons removed by FLAP scores, the output "
        "projections' kept columns refitted by least squares, or the block removed; 8-bit per-channel RTN on top for "
        "storage (PyTorch runs it as float). "
        "Options chosen by the solver on a latency table of block shapes timed on this machine and per-block loss "
        "probes; candidates cut with every block refitted on the dense model's statistics, measured on 16 held-out "
        "windows of WikiText-2 valid and timed beside the dense model (prefill of one 512-token window, 9 runs each "
        f"right after a dense one, median of the 9 ratios, {threads} threads); the chosen one compressed for real "
        "(its recipe, each block refitted on the cut model's states), reloaded from its folder and timed again, and "
        "once more with 1 thread beside the dense model, as benchmarks/structured.py and the other single-method "
        "benchmarks time theirs (prefill of the first test window with the KV cache and last-token logits). 'beats "
        "all': lower perplexity and fewer bytes than each configuration whose measured speed-up reaches the budget. "
        "'x one GPTQ run': search min over one GPTQ 4-bit g128 compression of the model with the protocol's "
        "calibration windows, timed right after the search in the same process.",
    ]


if __name__ == "__main__":
    main()
