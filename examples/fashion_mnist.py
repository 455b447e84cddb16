"""Train a small CNN on Fashion-MNIST, then slim it two ways: sparse (GMP) and smaller (channels).

    apt-get install dataset-fashion-mnist      # the IDX files (Debian package, MIT)
    python examples/fashion_mnist.py           # dense (cached), GMP to 80%, 50% FLOPs removed
    python examples/fashion_mnist.py --gmp 0.9 --flops 0.5 --finetune-epochs 2

The dense model trains once (3 epochs, about 91% test accuracy) and is cached as safetensors
in ``$NETSLIM_CACHE/fashion_mnist``; later runs load it in a second. Sparse: gradual magnitude
pruning (cubic schedule) while fine-tuning. Structured: the dependency-graph pruner removes
whole channels (conv filters with their batch-norm entries and the matching inputs of the next
layer) until the multiply-accumulates drop by ``--flops``, then the small model recovers by
fine-tuning with distillation from the dense one.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netslim.data.fashion_mnist import ImageSplit, load_fashion_mnist
from netslim.eval.flops import count_macs
from netslim.graph.api import ChannelPruneConfig, prune_channels
from netslim.models.loading import cache_dir
from netslim.training import DistillConfig, GMPConfig, make_callback
from netslim.training.loop import accuracy, fit

WIDTHS = (16, 32, 32)
HIDDEN = 128


def build_cnn(widths: tuple[int, int, int] = WIDTHS, hidden: int = HIDDEN, seed: int = 0) -> nn.Sequential:
    """Three 3x3 conv blocks (BN, ReLU; pooling after the first two) and a two-layer head.

    About 1.7M multiply-accumulates per 28x28 image at the default widths.
    """
    torch.manual_seed(seed)
    c1, c2, c3 = widths
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(), nn.MaxPool2d(2),   # (B, c1, 14, 14)
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(), nn.MaxPool2d(2),  # (B, c2, 7, 7)
        nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(),
        nn.Flatten(), nn.Linear(c3 * 7 * 7, hidden), nn.ReLU(), nn.Linear(hidden, 10),
    )


def load_data(train_limit: int | None = None, test_limit: int | None = None) -> tuple[ImageSplit, ImageSplit]:
    """The train and test splits (the first ``limit`` images of each when given)."""
    return load_fashion_mnist("train", train_limit), load_fashion_mnist("test", test_limit)


def dense_model(train: ImageSplit, test: ImageSplit, epochs: float = 3, seed: int = 0) -> tuple[nn.Module, dict]:
    """The trained dense CNN, from the safetensors cache or trained now (and cached)."""
    path = cache_dir() / "fashion_mnist" / f"cnn-{'-'.join(map(str, WIDTHS))}-{HIDDEN}-e{epochs}-s{seed}-n{len(train)}.safetensors"
    model = build_cnn(seed=seed)
    if path.is_file():
        model.load_state_dict(load_file(path))
        model.eval()
        info = json.loads(path.with_suffix(".json").read_text())
        return model, {**info, "cached": True}
    start = time.perf_counter()
    fit(model, train.images, train.labels, epochs=epochs, lr=2e-3, weight_decay=1e-4, seed=seed)
    info = {"epochs": epochs, "train_seconds": time.perf_counter() - start,
            "accuracy": accuracy(model, test.images, test.labels)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps(info))
    return model, {**info, "cached": False}


def gmp_finetune(dense: nn.Module, train: ImageSplit, sparsity: float, epochs: float = 2, seed: int = 0) -> tuple[nn.Module, dict]:
    """Gradual magnitude pruning of every conv and linear except the first conv and the classifier.

    The cubic schedule runs from step 0 to 60% of the fine-tuning steps, updating every 50
    steps; the remaining 40% train at the final sparsity.
    """
    model = copy.deepcopy(dense)
    steps = round(epochs * len(train) / 128)
    cfg = GMPConfig(final_sparsity=sparsity, end_step=int(0.6 * steps), frequency=50, ignore=("0", "14"))
    start = time.perf_counter()
    result = fit(model, train.images, train.labels, epochs=epochs, lr=5e-4, callback=make_callback(model, cfg), seed=seed)
    return model, {"config": cfg.model_dump(), "train_seconds": time.perf_counter() - start, **result}


def slim_structured(dense: nn.Module, flops_fraction: float, example: torch.Tensor) -> tuple[nn.Module, dict]:
    """A copy of ``dense`` with whole channels removed (L1 norm of each coupled group, same
    fraction per group) until the multiply-accumulates fall by ``flops_fraction``."""
    model = copy.deepcopy(dense)
    result = prune_channels(model, (example[:1],), ChannelPruneConfig(ratio=flops_fraction, measure="macs", importance="l1"))
    return model, {"before": result.before, "after": result.after, "groups": result.groups}


def structured_finetune(dense: nn.Module, train: ImageSplit, flops_fraction: float, epochs: float = 2,
                        seed: int = 0) -> tuple[nn.Module, dict]:
    """Remove ``flops_fraction`` of the MACs by channels, then recover with distillation from ``dense``."""
    model, pruned = slim_structured(dense, flops_fraction, train.images)
    distill = DistillConfig(temperature=4.0, alpha=0.7)
    start = time.perf_counter()
    result = fit(model, train.images, train.labels, epochs=epochs, lr=1e-3, teacher=dense, distill=distill, seed=seed)
    return model, {"pruning": pruned, "distill": distill.model_dump(), "train_seconds": time.perf_counter() - start, **result}


def macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on a single image of ``example``'s shape."""
    return count_macs(model.eval(), (example[:1],))


@torch.no_grad()
def latency_ms(models: dict[str, nn.Module], batch: torch.Tensor, repeats: int = 50, warmup: int = 5) -> dict[str, float]:
    """Median wall time of one forward pass of each model, in milliseconds.

    The models' runs are interleaved (one pass of each per round), so a machine shared with
    other jobs slows every model alike and the ratios stay fair.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.eval()(batch)
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(runs) for name, runs in times.items()}


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=3, help="dense training epochs")
    parser.add_argument("--gmp", type=float, default=0.8, help="GMP target sparsity (0 to skip)")
    parser.add_argument("--flops", type=float, default=0.5, help="fraction of MACs to remove (0 to skip)")
    parser.add_argument("--finetune-epochs", type=float, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test = load_data()
    dense, info = dense_model(train, test, args.epochs)
    out = {"dense": {"accuracy": info["accuracy"], "macs": macs(dense, test.images)}}
    if args.gmp:
        model, _ = gmp_finetune(dense, train, args.gmp, args.finetune_epochs)
        out[f"gmp {args.gmp:.0%}"] = {"accuracy": accuracy(model, test.images, test.labels), "nonzero": nonzero_params(model)}
    if args.flops:
        model, _ = structured_finetune(dense, train, args.flops, args.finetune_epochs)
        out[f"channels -{args.flops:.0%} MACs"] = {"accuracy": accuracy(model, test.images, test.labels),
                                                   "macs": macs(model, test.images)}
    print(json.dumps(out, indent=2))  # noqa: T201  (an example script reports on stdout)


if __name__ == "__main__":
    main()
