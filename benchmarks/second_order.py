"""Benchmark: SparseGPT, GPTQ, RTN, their chain, and OWL allocation on smollm2-135m (issue 3).

Protocol (the project's small protocol): perplexity on the first 80 non-overlapping windows of
512 tokens of WikiText-2 test; calibration 64 windows of 512 tokens drawn from WikiText-2
valid with seed 0; fp32 on CPU. Each configuration runs in its own subprocess from a fresh
copy of the model, so the peak RSS is per configuration. The compressed model is saved with
``netslim.save`` (``format="packed"``, float16 values) to measure its real size on disk and
bits per weight of the decoder Linear layers. Results accumulate in the JSON file, so the
script can be run piecemeal:

    nice -n 10 python benchmarks/second_order.py --only "sparsegpt 50%" "gptq 4-bit g128"
    nice -n 10 python benchmarks/second_order.py            # everything, about 1 h on 2 cores
    python benchmarks/second_order.py --quick               # 8 calibration / 8 evaluation windows
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import netslim
from _common import calib_windows, eval_windows, protocol_for, protocol_line, saved_results, write_results

CONFIGS = {
    "dense": [],
    "sparsegpt 50%": [{"method": "sparsegpt", "ratio": 0.5}],
    "gptq 4-bit g128": [{"method": "gptq", "bits": 4, "group_size": 128}],
    "gptq 4-bit g128 act-order": [{"method": "gptq", "bits": 4, "group_size": 128, "act_order": True}],
    "rtn 4-bit g128": [{"method": "rtn", "bits": 4, "group_size": 128}],
    "sparsegpt 2:4": [{"method": "sparsegpt", "pattern": "2:4"}],
    "gptq 3-bit g128": [{"method": "gptq", "bits": 3, "group_size": 128}],
    "rtn 3-bit g128": [{"method": "rtn", "bits": 3, "group_size": 128}],
    "sparsegpt 50% + gptq 4-bit g128": [
        {"method": "sparsegpt", "ratio": 0.5},
        {"method": "gptq", "bits": 4, "group_size": 128},
    ],
    "wanda 50% owl": [{"method": "wanda", "ratio": 0.5, "allocation": "owl"}],
    "wanda 70% owl": [{"method": "wanda", "ratio": 0.7, "allocation": "owl"}],
    "wanda 70%": [{"method": "wanda", "ratio": 0.7}],
}


def run_one(name: str, quick: bool) -> dict:
    """Compress, evaluate and save one configuration in this process; its result row."""
    from netslim.api import peak_rss_bytes  # noqa: PLC0415

    protocol = protocol_for(quick)
    lm = netslim.load_model(protocol["model"])
    windows = eval_windows(lm, protocol)
    row: dict = {"recipe": CONFIGS[name], "compress_seconds": 0.0, "size_bytes": None, "bits_per_weight": None}
    result = None
    if CONFIGS[name]:
        calib = calib_windows(lm, protocol)
        start = time.perf_counter()
        result = netslim.compress(lm, CONFIGS[name], calib, progress=False)
        row["compress_seconds"] = time.perf_counter() - start
        row["fallbacks"] = sorted({r.get("hessian_fallback", "none") for r in result.layers})
        row["block_sparsity"] = _block_sparsity(result.layers)
    row["ppl"] = netslim.evaluate(lm, data=windows, progress=False).ppl
    row["peak_rss_bytes"] = peak_rss_bytes()
    row.update(_saved_size(lm, result))
    return row


def _block_sparsity(layers: list[dict]) -> list[float] | None:
    """OWL's planned sparsity per block (from the layer records), when it varies."""
    targets: dict[int, float] = {}
    for record in layers:
        if "target_sparsity" in record:
            targets[int(record["name"].split(".layers.")[1].split(".")[0])] = record["target_sparsity"]
    values = [round(targets[i], 4) for i in sorted(targets)]
    return values if len(set(values)) > 1 else None


def _saved_size(lm: netslim.LoadedModel, result) -> dict:
    """Bytes of the saved safetensors and bits per decoder-Linear weight, or the save error."""
    from netslim.api import CompressionResult  # noqa: PLC0415
    from netslim.eval.size import folder_weight_bytes  # noqa: PLC0415

    result = result or CompressionResult(lm.model, lm.tokenizer, [], [], None, 0.0, 0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = netslim.save(result, Path(tmp) / "out", format="packed", dtype=torch.float16)
            summary = json.loads((folder / "netslim.json").read_text())["storage"]["summary"]
            linears = summary["decoder_linears"]
            return {"size_bytes": folder_weight_bytes(folder), "bits_per_weight": linears["bits_per_weight"]}
    except Exception as error:  # noqa: BLE001  (the figure is optional; record why it is missing)
        return {"save_error": f"{type(error).__name__}: {error}"}


def table(rows: dict, protocol: dict) -> str:
    """The markdown table of all rows so far, dense first."""
    dense = rows.get("dense", {}).get("ppl")
    lines = [
        "| configuration | perplexity | vs dense | compress s | peak RSS GB | size MB | bits/weight |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in [n for n in CONFIGS if n in rows]:
        r = rows[name]
        ratio = f"{r['ppl'] / dense:.2f}x" if dense else "n/a"
        size = f"{r['size_bytes'] / 1e6:.0f}" if r.get("size_bytes") else "n/a"
        bits = f"{r['bits_per_weight']:.2f}" if r.get("bits_per_weight") else "n/a"
        lines.append(f"| {name} | {r['ppl']:.2f} | {ratio} | {r['compress_seconds']:.0f} | "
                     f"{r['peak_rss_bytes'] / 1e9:.2f} | {size} | {bits} |")
    lines.append(
        protocol_line(protocol) + "; fp32, CPU, each configuration in its own process. Size: safetensors "
        "written by netslim.save(format='packed', dtype=float16); bits/weight over the decoder Linear weights."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one configuration, in-process
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_one(args.worker, args.quick)))
        return
    unknown = [n for n in args.only or [] if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    name = "second_order" + ("_quick" if args.quick else "")
    rows = saved_results(name).get("results", {})
    protocol = protocol_for(args.quick)
    for config in args.only or CONFIGS:
        command = [sys.executable, __file__, "--worker", config] + (["--quick"] if args.quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if not lines:
            sys.stderr.write(f"{config} failed:\n{done.stderr[-3000:]}\n")
            continue
        rows[config] = json.loads(lines[-1][len("RESULT "):])
        write_results(name, {"protocol": protocol, "results": rows}, table(rows, protocol))
        sys.stderr.write(f"{config}: ppl {rows[config]['ppl']:.2f}, {rows[config]['compress_seconds']:.0f} s\n")


if __name__ == "__main__":
    main()
