"""Benchmark: training-time sparsity and channel pruning on a Fashion-MNIST CNN (issue 6).

Protocol: the CNN of ``examples/fashion_mnist.py`` (3 conv blocks of 16/32/32 channels with
batch norm, a 1568-128-10 head) trained 3 epochs on the 60,000 training images (AdamW, lr 2e-3,
cosine, batch 128, seed 0); accuracy on the 10,000 test images. Every slimmed model starts
from that dense checkpoint:
  - GMP: gradual magnitude pruning of all convs and linears except the first conv and the
    classifier, cubic schedule from step 0 to 60% of a 2-epoch fine-tune (mask update every
    50 steps), AdamW lr 5e-4;
  - channels: the dependency-graph pruner removes whole channels until the conv + linear
    multiply-accumulates fall by half, then 2 epochs of fine-tuning with distillation from the
    dense model (T = 4, alpha = 0.7), AdamW lr 1e-3.
Latency: fp32 forward in eval mode on CPU with one intra-op thread (the machine is shared),
median of 200 (batch 1) or 50 (batch 64) runs after 5 warm-up runs.

    python benchmarks/training.py            # about 20 min on one busy core
    python benchmarks/training.py --quick    # 6,400 training images, 1,000 test images
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

from _common import write_results

EXAMPLE = Path(__file__).parents[1] / "examples" / "fashion_mnist.py"


def _example():
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(ex, model, test, extra: dict) -> dict:
    """Accuracy, size and MACs of one model (latency is timed later, all models interleaved)."""
    params, nonzero = ex.nonzero_params(model)
    return {
        "accuracy": ex.accuracy(model, test.images, test.labels),
        "params": params,
        "nonzero_params": nonzero,
        "macs": ex.macs(model, test.images),
        **extra,
    }


def add_latency(ex, models: dict, rows: dict, test) -> None:
    """Batch-1 and batch-64 CPU latency of every model, runs interleaved across models."""
    for key, batch, repeats in (("latency_ms_b1", 1, 200), ("latency_ms_b64", 64, 50)):
        for name, ms in ex.latency_ms(models, test.images[:batch], repeats=repeats).items():
            rows[name][key] = ms


def table(rows: dict) -> str:
    """The markdown table, accuracy deltas against the dense row."""
    dense = rows["dense"]
    lines = [
        "| model | test acc. | vs dense | non-zero params | MACs | CPU ms, batch 1 | CPU ms, batch 64 | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        delta = 100 * (r["accuracy"] - dense["accuracy"])
        lines.append(
            f"| {name} | {100 * r['accuracy']:.2f}% | {delta:+.2f} pt | {r['nonzero_params'] / 1e3:.0f}k / "
            f"{r['params'] / 1e3:.0f}k | {r['macs'] / 1e6:.2f}M | {r['latency_ms_b1']:.3f} | {r['latency_ms_b64']:.2f} | "
            f"{r.get('train_seconds', 0):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6,400 training and 1,000 test images")
    parser.add_argument("--sparsities", type=float, nargs="*", default=[0.8, 0.9])
    parser.add_argument("--flops", type=float, default=0.5, help="fraction of MACs removed by channel pruning")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ex = _example()
    train, test = ex.load_data(6_400, 1_000) if args.quick else ex.load_data()
    dense, info = ex.dense_model(train, test)
    models = {"dense": dense}
    rows = {"dense": measure(ex, dense, test, {"train_seconds": info["train_seconds"]})}
    for sparsity in args.sparsities:
        name = f"GMP {sparsity:.0%} (unstructured)"
        models[name], run = ex.gmp_finetune(dense, train, sparsity)
        rows[name] = measure(ex, models[name], test, {"train_seconds": run["train_seconds"],
                                                      "layers": run["sparsity"]["layers"]})
    if args.flops:
        name = f"channels -{args.flops:.0%} MACs + KD"
        models[name], run = ex.structured_finetune(dense, train, args.flops)
        pruned = ex.slim_structured(dense, args.flops, test.images)[0]  # before fine-tuning, same cut
        rows[name] = measure(ex, models[name], test, {"train_seconds": run["train_seconds"], "pruning": run["pruning"],
                                                      "accuracy_before_finetune": ex.accuracy(pruned, test.images, test.labels)})
    add_latency(ex, models, rows, test)
    protocol = (__doc__.split("Protocol: ")[1].split("\n\n")[0]).replace("\n", " ")
    payload = {"protocol": protocol, "quick": args.quick, "train_images": len(train), "test_images": len(test),
               "results": rows}
    write_results("training" + ("_quick" if args.quick else ""), payload,
                  table(rows) + f"\n\nProtocol: {protocol}")


if __name__ == "__main__":
    main()
