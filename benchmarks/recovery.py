"""Benchmark: recovery fine-tuning after compression (issue 17), on smollm2-135m.

Protocol (the project's small protocol): perplexity on the first 80 windows of 512 tokens of
WikiText-2 test; compression calibrated on 64 windows of 512 tokens of WikiText-2 valid, seed 0.
Recovery reads WikiText-2 valid too (the evaluation text is refused by the overlap check): its
non-overlapping windows of 512 tokens, min(512, budget / 512) of them selected at random or by
PASER, the token budget of :data:`TOKENS`; distillation from the dense model through its cached top-64
log-probabilities; forwards under bfloat16 autocast. Each compression runs once; every recovery
row starts from a copy of its result. Times are wall seconds on this machine with ``--threads``
threads, one job at a time: the recovery minutes include caching the teacher, and a row's
total (compression + recovery) is what the 30-minute goal counts.

    OMP_NUM_THREADS=2 python benchmarks/recovery.py --only "sparsegpt 2:4 | lora kd, random | 196,608 tokens"
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import netslim
from _common import dense_baseline, protocol_line, write_results

COMPRESSIONS = {
    "flap 50%": [{"method": "width", "score": "flap", "ratio": 0.5}],
    "slicegpt 30%": [{"method": "slicegpt", "ratio": 0.3}],
    "sparsegpt 2:4": [{"method": "sparsegpt", "ratio": 0.5, "pattern": "2:4"}],
    "wanda 50%": [{"method": "wanda", "ratio": 0.5}],
}
# every row: 8 windows of 512 tokens per step, bfloat16 autocast (this CPU has AVX-512 BF16), LoRA at lr 1e-3;
# min(512, tokens / 512) windows selected, so that the teacher caches no window that is never trained on
BUDGET = {"batch_size": 8, "precision": "bfloat16"}
RECOVERIES = {
    "lora kd, random": {"mode": "lora", "loss": "kd", "select": "random", "lr": 1e-3},
    "lora kd, paser": {"mode": "lora", "loss": "kd", "select": "paser", "lr": 1e-3},
    "norms kd, random": {"mode": "norms", "loss": "kd", "select": "random"},
}
GOALS = {"flap 50%": 3.0, "sparsegpt 2:4": 1.5}  # perplexity at most this many times the dense one
# (compression, recovery, token budget). The goal rows take what fits 30 minutes on 2 cores with the
# teacher's caching: unmasked LoRA (FLAP, SliceGPT) trains at about 1.7 s per window, masked LoRA
# (sparse layers) at about 2.7 s, the teacher 0.8 s. The comparisons (selected against random data,
# norms against LoRA) share one smaller budget.
COMPARISON_TOKENS = 65_536
ROWS = [("flap 50%", "lora kd, random", 327_680), ("sparsegpt 2:4", "lora kd, random", 196_608),
        ("slicegpt 30%", "lora kd, random", 131_072), ("wanda 50%", "lora kd, random", 131_072),
        *((c, r, COMPARISON_TOKENS) for c in ("flap 50%", "sparsegpt 2:4") for r in RECOVERIES)]


def row_name(compression: str, recovery: str, tokens: int) -> str:
    return f"{compression} | {recovery} | {tokens:,} tokens"


def main() -> None:
    every = {row_name(*row): row for row in ROWS}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, choices=list(every), help="rows to run")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run = dense_baseline("recovery", quick=False)
    rows = run.rows
    wanted = [every[name] for name in args.only] if args.only else ROWS
    for compression in dict.fromkeys(c for c, _, _ in wanted):
        lm = netslim.load_model(run.protocol["model"])
        start = time.perf_counter()
        netslim.compress(lm, COMPRESSIONS[compression], run.calib, progress=False, held_out=run.protocol["eval"])
        compress_seconds = time.perf_counter() - start
        before = netslim.evaluate(lm, data=run.windows, progress=False).ppl
        for _, recovery, tokens in (row for row in wanted if row[0] == compression):
            model = copy.deepcopy(lm.model)
            stage = {"method": "recover", **BUDGET, "tokens": tokens, "windows": min(512, tokens // 512),
                     **RECOVERIES[recovery]}
            start = time.perf_counter()
            summary = netslim.recover(model, run.dense_lm.model, stage, tokenizer=lm.tokenizer, progress=True)
            seconds = time.perf_counter() - start
            after = netslim.evaluate(model, lm.tokenizer, data=run.windows, progress=False).ppl
            rows[row_name(compression, recovery, tokens)] = {"total_minutes": (compress_seconds + seconds) / 60,
                "compression": COMPRESSIONS[compression], "recovery": stage, "compress_seconds": compress_seconds,
                "ppl_before": before, "ppl_after": after, "ratio_before": before / run.dense["ppl"],
                "ratio_after": after / run.dense["ppl"], "recover_seconds": seconds, "tokens": summary["tokens"],
                "steps": summary["steps"], "trained_params": summary["trained_params"],
                "first_loss": summary["first_loss"], "last_loss": summary["last_loss"]}
            write_results(run.name, {"protocol": run.protocol, "threads": args.threads, "dense": run.dense,
                                     "results": rows}, table(rows, run.dense, run.protocol, args.threads))
            del model


def table(rows: dict, dense: dict, protocol: dict, threads: int) -> str:
    lines = ["| compression | recovery | ppl before | ppl after | x dense before | x dense after | goal | tokens "
             "| trained params | recovery min | total min |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in rows.items():
        compression, recovery, _ = key.split(" | ")
        goal = GOALS.get(compression) if r["tokens"] != COMPARISON_TOKENS else None  # comparisons have none
        met = "-" if goal is None else f"<= {goal}x: {'met' if r['ratio_after'] <= goal else 'not met'}"
        lines.append(f"| {compression} | {recovery} | {r['ppl_before']:.2f} | {r['ppl_after']:.2f} | "
                     f"{r['ratio_before']:.2f}x | {r['ratio_after']:.2f}x | {met} | {r['tokens']:,} | "
                     f"{r['trained_params']:,} | {r['recover_seconds'] / 60:.1f} | {r['total_minutes']:.1f} |")
    lines.append(protocol_line(protocol) + f". Dense perplexity {dense['ppl']:.2f}. Recovery on windows of 512 "
                 "tokens of WikiText-2 valid, 8 per step, AdamW with warm-up and cosine decay, bfloat16 autocast, "
                 f"{threads} threads; recovery minutes include caching the dense teacher's top-64 log-probabilities, "
                 "total minutes add the compression.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
