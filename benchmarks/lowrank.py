"""Benchmark: SVD, ASVD, SVD-LLM (uniform and sensitivity ranks) and GPTQ+EoRA on smollm2-135m (issue 5).

Protocol (the project's small protocol): perplexity on the first 80 non-overlapping windows of
512 tokens of WikiText-2 test; calibration 64 windows of 512 tokens drawn from WikiText-2
valid with seed 0; fp32 on CPU. ``removed`` is the fraction of the decoder blocks' projection
parameters removed (the ratio the low-rank methods target). One dense model is loaded and
measured per run; every configuration starts from a fresh copy, and its CPU prefill latency
(1 x 512 tokens, median of repeated runs, 1 thread) is measured interleaved with the dense
model's in the same process. Size: bytes of the safetensors ``netslim.save`` writes (default
settings), dense and compressed alike. Results accumulate in the JSON file:

    nice -n 10 python benchmarks/lowrank.py --only "svd_llm uniform 20%" "svd_llm sensitivity 20%"
    nice -n 10 python benchmarks/lowrank.py --ratios 20 30      # every method at 20% and 30%
    nice -n 10 python benchmarks/lowrank.py                     # the whole grid (hours on 2 cores)
    python benchmarks/lowrank.py --quick                        # 8 calibration / 8 evaluation windows
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import netslim
from _common import SMALL_PROTOCOL, calib_windows, eval_windows, protocol_for, protocol_line, saved_results, write_results
from netslim.eval.latency import compare_latency
from netslim.eval.size import count_params, folder_weight_bytes
from netslim.models.adapter import ModelAdapter

RATIOS = (10, 20, 30, 40)
METHODS = ("svd_llm", "asvd", "svd")  # whitened SVD first: the figures that matter most
ALLOCATIONS = ("uniform", "sensitivity")


def grid() -> dict[str, tuple[int | None, list[dict]]]:
    """Configuration name -> (ratio in percent or None, recipe), in the order to run them."""
    configs: dict[str, tuple[int | None, list[dict]]] = {}
    order = sorted(RATIOS, key=lambda r: (r != 20, r))  # 20% first, then the rest
    for ratio in order:
        for method in METHODS:
            for allocation in ALLOCATIONS:
                stage = {"method": method, "ratio": ratio / 100, "allocation": allocation}
                configs[f"{method} {allocation} {ratio}%"] = (ratio, [stage])
    gptq = {"method": "gptq", "bits": 3, "group_size": 128}
    configs["gptq 3-bit g128"] = (None, [gptq])
    configs["gptq 3-bit g128 + eora r32"] = (None, [gptq, {"method": "eora", "rank": 32}])
    return configs


def projection_params(model: torch.nn.Module) -> int:
    """Parameters of the decoder blocks' projections (dense, factorized or wrapped)."""
    adapter = ModelAdapter.from_model(model)
    return sum(count_params(m) for i in range(adapter.num_blocks) for m in adapter.block_linears(i).values())


def saved_bytes(lm: netslim.LoadedModel, result=None) -> int:
    """Bytes of the safetensors files ``netslim.save`` writes for the model."""
    from netslim.api import CompressionResult  # noqa: PLC0415

    result = result or CompressionResult(lm.model, lm.tokenizer, [], [], None, 0.0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        return folder_weight_bytes(netslim.save(result, Path(tmp) / "out"))


def run_config(recipe: list[dict], dense: netslim.LoadedModel, calib, windows, prompt) -> dict:
    """Compress a fresh copy with ``recipe``; perplexity, sizes, latency against ``dense``."""
    lm = netslim.load_model(SMALL_PROTOCOL["model"])
    start = time.perf_counter()
    result = netslim.compress(lm, recipe, calib, progress=False)
    seconds = time.perf_counter() - start
    evaluation = netslim.evaluate(lm, data=windows, progress=False)
    latency = compare_latency({"dense": dense.model, "compressed": lm.model}, prompt, new_tokens=0, threads=1)
    fallbacks = sorted({r.get("whitening_fallback") or r.get("hessian_fallback") or "none" for r in result.layers})
    ranks = [r["rank"] for r in result.layers if "rank" in r]
    factorized = [r for r in ranks if r is not None]
    return {
        "recipe": recipe,
        "ppl": evaluation.ppl,
        "params": evaluation.size.params,
        "projection_params": projection_params(lm.model),
        "size_bytes": saved_bytes(lm, result),
        "prefill_s": latency["compressed"].prefill_s,
        "dense_prefill_s": latency["dense"].prefill_s,
        "compress_seconds": seconds,
        "fallbacks": fallbacks,
        "ranks": {"min": min(factorized, default=None), "max": max(factorized, default=None),
                  "dense_kept": ranks.count(None)} if ranks else None,
    }


def table_order(configs: dict[str, tuple[int | None, list[dict]]]) -> list[str]:
    """Names of ``grid()`` grouped by method and allocation, ratios ascending, quantization last."""
    def key(name: str):
        ratio, recipe = configs[name]
        if ratio is None:
            return (1, 0, 0, 0)
        return (0, METHODS.index(recipe[0]["method"]), ALLOCATIONS.index(recipe[0]["allocation"]), ratio)

    return sorted(configs, key=key)


def table(rows: dict, protocol: dict) -> str:
    """The markdown table: dense first, then configurations by method, allocation and ratio."""
    configs = grid()
    dense = rows["dense"]
    lines = [
        "| configuration | removed | perplexity | vs dense | params | size MB | prefill speedup | compress s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ["dense", *[n for n in table_order(configs) if n in rows]]:
        r = rows[name]
        factorized = name == "dense" or configs[name][0] is not None
        removed = f"{1 - r['projection_params'] / dense['projection_params']:.0%}" if factorized else "-"
        params = f"{r['params'] / 1e6:.1f}M" if factorized else "-"
        speedup = r["dense_prefill_s"] / r["prefill_s"] if r.get("prefill_s") else 1.0
        lines.append(
            f"| {name} | {removed} | {r['ppl']:.2f} | {r['ppl'] / dense['ppl']:.2f}x | {params} | "
            f"{r['size_bytes'] / 1e6:.0f} | {speedup:.2f}x | {r.get('compress_seconds', 0):.0f} |"
        )
    lines.append(
        protocol_line(protocol) + "; fp32, CPU. 'removed': fraction of decoder projection parameters removed "
        "(GPTQ keeps every projection's shape in 3-bit codes; EoRA r32 adds rank-32 fp32 factors to each). "
        "Prefill speedup: dense / compressed median time of a 1x512 prefill, 1 thread, interleaved in one "
        "process on a shared 2-core machine. Size: safetensors written by netslim.save."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    parser.add_argument("--ratios", nargs="*", type=int, default=None, help="percent ratios to run, e.g. 20 30")
    args = parser.parse_args()
    configs = grid()
    unknown = [n for n in args.only or [] if n not in configs]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(configs)}")
    chosen = [n for n in configs if (not args.only or n in args.only)
              and (args.ratios is None or configs[n][0] in args.ratios)]
    protocol = protocol_for(args.quick)
    name = "lowrank" + ("_quick" if args.quick else "")
    rows = saved_results(name).get("results", {})
    dense = netslim.load_model(protocol["model"])
    windows = eval_windows(dense, protocol)
    calib = calib_windows(dense, protocol)
    prompt = windows.ids[:1]
    evaluation = netslim.evaluate(dense, data=windows, progress=False)
    rows["dense"] = {"recipe": [], "ppl": evaluation.ppl, "params": evaluation.size.params,
                     "projection_params": projection_params(dense.model), "size_bytes": saved_bytes(dense)}
    for config in chosen:
        rows[config] = run_config(configs[config][1], dense, calib, windows, prompt)
        write_results(name, {"protocol": protocol, "results": rows}, table(rows, protocol))
        print(f"{config}: ppl {rows[config]['ppl']:.2f}, {rows[config]['compress_seconds']:.0f} s", flush=True)
    write_results(name, {"protocol": protocol, "results": rows}, table(rows, protocol))


if __name__ == "__main__":
    main()
