"""Benchmark: SliceGPT rotate-and-slice on smollm2-135m at 20/30/50% of decoder parameters (issue 4).

Protocol (the project's small protocol): perplexity on the first 80 non-overlapping windows of
512 tokens of WikiText-2 test; calibration 64 windows of 512 tokens drawn from WikiText-2
valid with seed 0; fp32 on CPU. SliceGPT's ``slicing`` is a fraction of the hidden dimension;
for each target fraction of decoder-block parameters removed, the kept width (a multiple of
8) whose predicted block parameters, shortcut matrices included, come closest to the target
is chosen before any calibration. Both the slicing fraction and the measured fraction of
block parameters removed are reported, and the total parameter count, which includes the LM
head that slicing must untie from the embeddings. Latency: prefill of 1 x 512 tokens and
greedy generation of 64 tokens after a 32-token prompt, medians of repeated runs, the dense
model timed in the same process with interleaved runs (:func:`netslim.eval.latency.compare_latency`).
Results accumulate in ``results/slicegpt.json`` across invocations:

    nice -n 10 python benchmarks/slicegpt.py --targets 0.2
    nice -n 10 python benchmarks/slicegpt.py --targets 0.3 0.5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import netslim
from _common import decoder_params, dense_baseline, protocol_line, side_by_side_latency, write_results
from netslim.eval.size import folder_weight_bytes
from netslim.models.adapter import ModelAdapter
from netslim.models.rotate import sliced_block_params

ROUND_TO = 8


def slicing_for(dense_model, target: float) -> tuple[float, int, float]:
    """``(slicing, width, predicted removed fraction)`` closest to removing ``target`` of block params."""
    adapter = ModelAdapter.from_model(dense_model)
    dense = decoder_params(dense_model)
    hidden = adapter.hidden_size

    def removed(width: int) -> float:
        return 1 - sum(sliced_block_params(adapter, i, width, width, width) for i in range(adapter.num_blocks)) / dense

    width = min(range(ROUND_TO, hidden + 1, ROUND_TO), key=lambda w: abs(removed(w) - target))
    return 1 - width / hidden, width, removed(width)


def run_one(target, protocol, calib, windows, dense_lm, prompt, args, tmp) -> dict:
    """Slice a fresh model to the target, evaluate it, save it, and time it beside the dense model."""
    slicing, width, predicted = slicing_for(dense_lm.model, target)
    lm = netslim.load_model(protocol["model"])
    start = time.perf_counter()
    result = netslim.compress(lm, netslim.SliceGPTConfig(ratio=slicing, round_to=ROUND_TO), calib, progress=False)
    seconds = time.perf_counter() - start
    folder = netslim.save(result, tmp / f"slicegpt-{target:.2f}", overwrite=True)
    row = {"target_removed": target, "slicing": slicing, "width": width, "predicted_removed": predicted,
           "compress_seconds": seconds, **netslim.evaluate(lm, data=windows, progress=False).as_dict(),
           "decoder_params": decoder_params(lm.model), "saved_bytes": folder_weight_bytes(folder),
           "blocks": [{k: r[k] for k in ("d_in", "d_mid", "d_out", "params")} for r in result.layers]}
    if args.repeats:
        row["latency"] = side_by_side_latency(dense_lm.model, lm.model, "sliced", prompt, args.repeats, args.threads)
    return row


def table(rows: dict, dense: dict, protocol: dict, threads: int) -> str:
    """The markdown table of all rows."""
    lines = [
        "| target | slicing (hidden) | width | decoder params removed | perplexity | params (total) | size MB "
        "| prefill 1x512 | generate 64 | compress s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| dense | 0% | 576 | 0% | {dense['ppl']:.2f} | {dense['params'] / 1e6:.1f}M | {dense['size_bytes'] / 1e6:.0f} "
        "| 1.00x | 1.00x | 0 |",
    ]
    for key in sorted(rows):
        r = rows[key]
        lat = r.get("latency")
        speed = f"{lat['prefill_speedup']:.2f}x | {lat['generate_speedup']:.2f}x" if lat else "- | -"
        removed = 1 - r["decoder_params"] / dense["decoder_params"]
        lines.append(f"| {r['target_removed']:.0%} | {r['slicing']:.1%} | {r['width']} | {removed:.1%} | {r['ppl']:.2f} | "
                     f"{r['params'] / 1e6:.1f}M | {r['size_bytes'] / 1e6:.0f} | {speed} | {r['compress_seconds']:.0f} |")
    lines.append(
        protocol_line(protocol) + "; fp32, CPU. 'slicing' is SliceGPT's fraction of the hidden dimension "
        "deleted; 'decoder params removed' is measured on the decoder blocks, shortcut matrices included. Total params include the "
        "LM head, untied from the embeddings because the two are rotated differently. Speedups: dense / sliced "
        f"median time, prefill of 1x512 tokens and greedy generation of 64 tokens, {threads} thread(s), measured "
        "side by side in one process on a shared 2-core machine.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--targets", nargs="*", type=float, default=[0.2, 0.3, 0.5],
                        help="fractions of decoder-block parameters to remove")
    parser.add_argument("--repeats", type=int, default=5, help="timed latency runs (0 skips latency)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for the timings (compression and evaluation use every core)")
    parser.add_argument("--tmp", default="/tmp/netslim-slicegpt-bench", help="where sliced models are saved")
    args = parser.parse_args()
    run = dense_baseline("slicegpt", args.quick)
    protocol, rows, dense = run.protocol, run.rows, run.dense
    for target in args.targets:
        rows[f"{target:.2f}"] = run_one(target, protocol, run.calib, run.windows, run.dense_lm, run.windows.ids[:1], args,
                                        Path(args.tmp))
        write_results(run.name, {"protocol": protocol, "latency_threads": args.threads, "dense": dense, "results": rows},
                      table(rows, dense, protocol, args.threads))


if __name__ == "__main__":
    main()
