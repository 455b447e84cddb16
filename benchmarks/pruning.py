"""Benchmark: magnitude and Wanda, unstructured 50% and 2:4, on smollm2-135m (issue 2).

Protocol (the project's small protocol): perplexity on the first 80 non-overlapping windows of
512 tokens of WikiText-2 test; calibration 64 windows of 512 tokens drawn from WikiText-2
valid with seed 0; fp32 on CPU. Every configuration starts from a fresh copy of the dense
model; the dense baseline is measured in the same run.

    python benchmarks/pruning.py            # all configurations, about 15 min on 2 cores
    python benchmarks/pruning.py --quick    # 8 calibration / 8 evaluation windows
"""

from __future__ import annotations

import argparse
import time

import netslim
from _common import calib_windows, eval_windows, protocol_for, protocol_line, write_results

CONFIGS = {
    "magnitude 50%": {"method": "magnitude", "ratio": 0.5},
    "wanda 50%": {"method": "wanda", "ratio": 0.5},
    "magnitude 2:4": {"method": "magnitude", "pattern": "2:4"},
    "wanda 2:4": {"method": "wanda", "pattern": "2:4"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = parser.parse_args()
    protocol = protocol_for(args.quick)
    lm = netslim.load_model(protocol["model"])
    windows = eval_windows(lm, protocol)
    calib = calib_windows(lm, protocol)
    rows = {"dense": {**netslim.evaluate(lm, data=windows).as_dict(), "compress_seconds": 0.0}}
    for name, stage in CONFIGS.items():
        if args.only and name not in args.only:
            continue
        fresh = netslim.load_model(protocol["model"])
        start = time.perf_counter()
        netslim.compress(fresh, stage, calib)
        seconds = time.perf_counter() - start
        rows[name] = {**netslim.evaluate(fresh, data=windows).as_dict(), "compress_seconds": seconds}
    dense_ppl = rows["dense"]["ppl"]
    lines = [
        "| configuration | perplexity | vs dense | non-zero params | compress s |",
        "|---|---:|---:|---:|---:|",
        *[f"| {k} | {v['ppl']:.2f} | {v['ppl'] / dense_ppl:.2f}x | {v['nonzero_params'] / 1e6:.1f}M | "
          f"{v['compress_seconds']:.0f} |" for k, v in rows.items()],
    ]
    proto_line = protocol_line(protocol, windows.describe()["windows"]) + "; fp32, CPU."
    write_results("pruning" + ("_quick" if args.quick else ""), {"protocol": protocol, "results": rows},
                  "\n".join(lines) + proto_line)
    print("\n".join(lines) + proto_line)


if __name__ == "__main__":
    main()
