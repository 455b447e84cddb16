"""Benchmark: width (heads + MLP neurons) and depth (whole blocks) pruning on smollm2-135m (issue 4).

Protocol (the project's small protocol): perplexity on the first 80 non-overlapping windows of
512 tokens of WikiText-2 test; calibration 64 windows of 512 tokens drawn from WikiText-2
valid with seed 0; fp32 on CPU. Ratios are fractions of the decoder blocks' projection
parameters removed. Every configuration starts from a fresh copy of the dense model.
Latency: prefill of 1 x 512 tokens (KV cache plus last-token logits, as ``generate`` does)
and greedy generation of 64 tokens after a 32-token prompt, median of repeated runs, the
dense model timed in the same process with its runs interleaved with the pruned model's,
with a fixed number of threads (``--threads``, stated in the JSON; compression and evaluation use
every core). Results accumulate in ``results/structured.json`` across invocations, so the grid
can be run in pieces:

    nice -n 10 python benchmarks/structured.py --only width-flap-global --ratios 0.5
    nice -n 10 python benchmarks/structured.py --only depth-bi depth-ppl
    python benchmarks/structured.py --quick  # 8 calibration / 8 evaluation windows, own file
"""

from __future__ import annotations

import argparse
import time

import netslim
from _common import decoder_params, dense_baseline, protocol_line, side_by_side_latency, write_results

CONFIGS = {
    "width-magnitude": {"method": "width", "score": "magnitude"},
    "width-wanda": {"method": "width", "score": "wanda"},
    "width-flap": {"method": "width", "score": "flap"},
    "width-flap-global": {"method": "width", "score": "flap", "allocation": "global"},
    "width-flap-refit": {"method": "width", "score": "flap", "refit": True},
    "width-flap-global-refit": {"method": "width", "score": "flap", "allocation": "global", "refit": True},
    "width-taylor": {"method": "width", "score": "taylor"},
    "depth-bi": {"method": "depth", "score": "block_influence"},
    "depth-ppl": {"method": "depth", "score": "perplexity"},
}


def stage_for(name: str, ratio: float) -> dict:
    """The recipe stage of configuration ``name`` at ``ratio``."""
    return {**CONFIGS[name], "ratio": ratio}


def run_one(name, ratio, protocol, calib, windows, dense_lm, prompt, args) -> dict:
    """Compress a fresh model, evaluate it and time it beside the dense model."""
    lm = netslim.load_model(protocol["model"])
    start = time.perf_counter()
    result = netslim.compress(lm, stage_for(name, ratio), calib, progress=False)
    seconds = time.perf_counter() - start
    row = {"config": stage_for(name, ratio), "compress_seconds": seconds,
           **netslim.evaluate(lm, data=windows, progress=False).as_dict(),
           "decoder_params": decoder_params(lm.model),
           "shapes": sorted({(r.get("heads"), r.get("kv_heads"), r.get("intermediate")) for r in result.layers if "heads" in r})}
    if args.repeats:
        row["latency"] = side_by_side_latency(dense_lm.model, lm.model, "pruned", prompt, args.repeats, args.threads)
    return row


def table(rows: dict, dense: dict, protocol: dict, threads: int) -> str:
    """The markdown table of all rows."""
    lines = [
        "| configuration | removed | perplexity | params | size MB | prefill speedup | generate speedup | compress s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| dense | 0% | {dense['ppl']:.2f} | {dense['params'] / 1e6:.1f}M | {dense['size_bytes'] / 1e6:.0f} | 1.00x | 1.00x | 0 |",
    ]
    for key in sorted(rows):
        r = rows[key]
        removed = 1 - r["decoder_params"] / dense["decoder_params"]
        lat = r.get("latency")
        speed = (f"{lat['prefill_speedup']:.2f}x | {lat['generate_speedup']:.2f}x" if lat else "- | -")
        lines.append(f"| {key} | {removed:.0%} | {r['ppl']:.2f} | {r['params'] / 1e6:.1f}M | "
                     f"{r['size_bytes'] / 1e6:.0f} | {speed} | {r['compress_seconds']:.0f} |")
    lines.append(
        protocol_line(protocol) + "; fp32, CPU. 'removed' is the fraction of decoder-block parameters removed. "
        f"Speedups: dense / pruned median time, prefill of 1x512 tokens and greedy generation of 64 tokens, "
        f"{threads} thread(s), measured side by side in one process on a shared 2-core machine.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--only", nargs="*", default=None, choices=sorted(CONFIGS), help="configurations to run")
    parser.add_argument("--ratios", nargs="*", type=float, default=[0.2, 0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=5, help="timed latency runs (0 skips latency)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the timings (compression and evaluation use every core)")
    args = parser.parse_args()
    run = dense_baseline("structured", args.quick)
    protocol, rows, dense = run.protocol, run.rows, run.dense
    prompt = run.windows.ids[:1]
    for config in args.only or list(CONFIGS):
        for ratio in args.ratios:
            rows[f"{config} {ratio:.0%}"] = run_one(config, ratio, protocol, run.calib, run.windows, run.dense_lm, prompt,
                                                    args)
            write_results(run.name, {"protocol": protocol, "latency_threads": args.threads, "dense": dense,
                                     "results": rows}, table(rows, dense, protocol, args.threads))


if __name__ == "__main__":
    main()
