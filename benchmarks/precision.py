"""Benchmark: bfloat16 against float32, and batched calibration forwards, for time and quality (issue 14).

Each configuration is one `compress_job` on smollm2-135m under the small protocol, in its own
fresh process, one after the other, with the same thread count. Compression seconds are the
job's own (calibration pass only); perplexity is measured in the dtype the job ran in.

    python benchmarks/precision.py
    python benchmarks/precision.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import protocol_for, protocol_line, write_results

METHODS = {"wanda 50%": {"method": "wanda", "ratio": 0.5},
           "gptq 4-bit g128": {"method": "gptq", "bits": 4, "group_size": 128}}
RUNS = [("float32", 1), ("bfloat16", 1), ("float32", 8)]


def _child(method: str, dtype: str, batch: int, quick: bool) -> None:
    from netslim.engine.execution import Execution  # noqa: PLC0415
    from netslim.job import Protocol, compress_job  # noqa: PLC0415

    p = protocol_for(quick)
    protocol = Protocol(calib_windows=p["calib_windows"], eval_windows=p["eval_windows"])
    result = compress_job(p["model"], METHODS[method], None, protocol, progress=False,
                          execution=Execution(dtype=dtype, batch_size=batch))
    report = result.report
    print(json.dumps({"seconds": report.compress_seconds, "dense_ppl": report.baseline.ppl,
                      "ppl": report.compressed.ppl, "peak_rss_bytes": report.peak_rss_bytes}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, dtype, batch = args.child
        _child(method, dtype, int(batch), args.quick)
        return
    rows = {}
    for method in METHODS:
        for dtype, batch in RUNS:
            command = [sys.executable, __file__, "--child", method, dtype, str(batch), *(["--quick"] if args.quick else [])]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            rows[f"{method}, {dtype}, batch {batch}"] = row = json.loads(done.stdout.strip().splitlines()[-1])
            print(method, dtype, batch, row, flush=True)
    lines = ["| configuration | seconds | x float32 batch 1 | dense ppl | ppl | ppl x float32 |", "|---|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        base = rows[f"{name.split(',')[0]}, float32, batch 1"]
        lines.append(f"| {name} | {row['seconds']:.0f} | {row['seconds'] / base['seconds']:.2f} | {row['dense_ppl']:.3f} | "
                     f"{row['ppl']:.3f} | {row['ppl'] / base['ppl']:.4f} |")
    protocol = protocol_for(args.quick)
    table = "\n".join(lines) + protocol_line(protocol) + (
        f"; CPU, {args.threads} threads; each configuration in a fresh process, one after the other; seconds of "
        "the calibration pass; perplexity evaluated in the dtype the job ran in.")
    write_results("precision_quick" if args.quick else "precision", {"protocol": protocol, "runs": rows}, table)
    print(table)


if __name__ == "__main__":
    main()
