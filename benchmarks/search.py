"""Budget search on smollm2-135m: the searched model against every single-method configuration.

Budgets (small protocol; the search measures its candidates on 16 held-out windows of
WikiText-2 valid, never on the test text, then the chosen model is compressed for real and
evaluated on the first 80 test windows):

- ``size``: stored weights at most the 16-bit embeddings, norms and head plus 0.28x the fp16
  bytes of the decoder projections (about 4.5 bits per decoder weight);
- ``ppl``: perplexity at most 1.25x dense, at the smallest size.

Each searched model is compared with every single-method configuration of
``benchmarks/results`` (second_order, pruning, lowrank, structured, slicegpt: PyTorch runtime)
on the other axis: for ``size``, the perplexity of every configuration that fits the size;
for ``ppl``, the size of every configuration within the perplexity. The search's cost is
stated against the one GPTQ compression it ends with, measured in the same run.

    python benchmarks/search.py [--only size ppl] [--threads 2]

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

from _common import RESULTS, SMALL_PROTOCOL, protocol_line, saved_results, write_results

SIZE_SHARE = 0.28  # of the fp16 bytes of the decoder projections
PPL_RATIO = 1.25
SINGLE_METHOD = ("second_order", "pruning", "lowrank", "structured", "slicegpt")  # PyTorch-runtime results


def budgets() -> dict[str, str]:
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    projections = decoder_projections(ModelAdapter.from_model(lm.model))
    decoder = sum(2 * p.numel() for m in projections.values() for p in m.parameters())
    size = fixed_bytes(lm.model, projections) + int(SIZE_SHARE * decoder)
    return {"size": f"size={size}B", "ppl": f"ppl={PPL_RATIO}x"}


def single_method_rows() -> dict[str, dict]:
    """Every measured configuration of the PyTorch-runtime benchmarks: name -> size_bytes, ppl."""
    rows = {}
    for name in SINGLE_METHOD:
        saved = saved_results(name)
        for key, row in saved.get("results", {}).items():
            if key != "dense" and isinstance(row, dict) and "ppl" in row and "size_bytes" in row:
                rows[f"{name}: {key}"] = {"size_bytes": row["size_bytes"], "ppl": row["ppl"]}
    return rows


def compare(kind: str, final: dict, budget: float, dense_ppl: float, others: dict[str, dict]) -> dict:
    """Whether the searched model is strictly better, on the other axis, than every configuration within the budget."""
    if kind == "size":
        within = {k: r for k, r in others.items() if r["size_bytes"] <= budget}
        beaten = {k: final["ppl"] < r["ppl"] for k, r in within.items()}
    else:
        within = {k: r for k, r in others.items() if r["ppl"] <= budget * dense_ppl}
        beaten = {k: final["bytes_on_disk"] < r["size_bytes"] for k, r in within.items()}
    best = (min(within.items(), key=lambda kv: kv[1]["ppl" if kind == "size" else "size_bytes"]) if within else None)
    return {"within_budget": len(within), "beats_all": all(beaten.values()), "beaten": beaten,
            "best_single": None if best is None else {"name": best[0], **best[1]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, choices=["size", "ppl"])
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
        rows[kind] = {
            "budget": budget, "seconds": seconds, "work_seconds": pareto["work_seconds"], "final": final,
            "chosen": result.chosen,
            "points": pareto["points"], "fixed_bytes": pareto["fixed_bytes"],
            "decoder_bits_per_weight": 8 * (final["bytes_on_disk"] - pareto["fixed_bytes"]) / _decoder_weights(),
            "cost_vs_one_gptq": pareto["work_seconds"] / final["compress_seconds"],
            "peak_rss_bytes": pareto["peak_rss_bytes"],
            "comparison": compare(kind, final, value, final["dense_ppl"], others),
        }
        write_results("search", {"protocol": SMALL_PROTOCOL, "threads": args.threads, "results": rows},
                      table(rows, args.threads))
        shutil.rmtree(out.parent, ignore_errors=True)


def _decoder_weights() -> int:
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    return sum(m.weight.numel() for m in decoder_projections(ModelAdapter.from_model(lm.model)).values())


def table(rows: dict, threads: int) -> str:
    lines = ["| budget | chosen | MB on disk (predicted) | decoder bits/weight | test ppl | vs dense | best single method "
             "within the budget | beats all | search min | x one GPTQ run |",
             "|---|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for kind, row in rows.items():
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
    return "\n".join(lines)


if __name__ == "__main__":
    main()
