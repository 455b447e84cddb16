"""Benchmark: compression time against the number of decoder blocks (issue 14).

smollm2-135m cut to its first 2, 4, 8 and 16 blocks (the same weights, the config's
``num_hidden_layers`` set to match), each compressed by Wanda 50% and by GPTQ 4-bit g128 on the
same calibration windows, in one process, one run after the other, with the same thread count.
The engine visits each block once per pass, so the time should grow linearly with the blocks:
the JSON has each time, the least-squares line through them, its R², and the time per block.

    python benchmarks/linear_cost.py
    python benchmarks/linear_cost.py --quick     # 8 calibration windows
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import protocol_for, write_results

import netslim

BLOCKS = (2, 4, 8, 16)
METHODS = {"wanda 50%": {"method": "wanda", "ratio": 0.5},
           "gptq 4-bit g128": {"method": "gptq", "bits": 4, "group_size": 128}}


def _cut(lm: netslim.LoadedModel, blocks: int) -> netslim.LoadedModel:
    """``lm`` with only its first ``blocks`` decoder blocks."""
    lm.model.model.layers = lm.model.model.layers[:blocks]
    lm.model.config.num_hidden_layers = blocks
    if isinstance(getattr(lm.model.config, "layer_types", None), list):  # per-block attention kinds
        lm.model.config.layer_types = lm.model.config.layer_types[:blocks]
    return lm


def _line(xs: list[int], ys: list[float]) -> dict:
    """Least-squares ``y = slope * x + intercept`` and its R²."""
    x, y = torch.tensor(xs, dtype=torch.float64), torch.tensor(ys, dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    residual = float(((y - (slope * x + intercept)) ** 2).sum())
    return {"slope_seconds_per_block": slope, "intercept_seconds": intercept,
            "r2": 1 - residual / float(((y - y.mean()) ** 2).sum())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    protocol = protocol_for(args.quick)
    calib = netslim.calibration(netslim.load_model(protocol["model"]), source=protocol["calib"],
                                windows=protocol["calib_windows"], seqlen=protocol["seqlen"], seed=protocol["seed"])
    rows: dict[str, dict] = {}
    for method, recipe in METHODS.items():
        seconds = []
        for blocks in BLOCKS:
            lm = _cut(netslim.load_model(protocol["model"]), blocks)
            started = time.perf_counter()
            netslim.compress(lm, recipe, calib, progress=False)
            seconds.append(time.perf_counter() - started)
            print(f"{method}, {blocks} blocks: {seconds[-1]:.1f} s", flush=True)
        rows[method] = {"blocks": list(BLOCKS), "seconds": seconds, **_line(list(BLOCKS), seconds),
                        "ratio_16_to_2": seconds[-1] / seconds[0]}
    lines = ["| method | " + " | ".join(f"{b} blocks (s)" for b in BLOCKS) + " | s per block | R² | 16/2 |",
             "|---|" + "---:|" * (len(BLOCKS) + 3)]
    for method, row in rows.items():
        lines.append(f"| {method} | " + " | ".join(f"{s:.1f}" for s in row["seconds"]) +
                     f" | {row['slope_seconds_per_block']:.2f} | {row['r2']:.4f} | {row['ratio_16_to_2']:.2f} |")
    lines += ["", f"Protocol: {protocol['model']} cut to its first 2, 4, 8 and 16 blocks; the same "
              f"{protocol['calib_windows']} calibration windows of {protocol['seqlen']} tokens of WikiText-2 valid "
              f"(seed {protocol['seed']}); `netslim.compress` timed alone (no evaluation), one run after the other "
              f"in one process, {args.threads} threads. Linear cost: 16/2 = 8 and R² = 1."]
    table = "\n".join(lines)
    write_results("linear_cost", {"protocol": {**protocol, "threads": args.threads, "blocks": list(BLOCKS)},
                                  "methods": rows}, table)
    print(table)


if __name__ == "__main__":
    main()
