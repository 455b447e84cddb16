"""Benchmark: bytes on disk of compressed smollm2-135m artifacts, packed versus dense.

Protocol: smollm2-135m (fp32 in memory) is compressed with each configuration (Wanda with 64
calibration windows of 512 tokens of WikiText-2 valid, seed 0; RTN data-free), then saved with
``netslim.save`` in ``format="dense"`` (plain transformers layout, fp32) and ``format="packed"``
(packed codecs, float16 values). Reported: bytes of the ``*.safetensors`` files, bytes and bits
per weight of the decoder Linear weights (210 projections, 134M -> 106.2M weights), save and
load seconds, and perplexity on the first ``--eval-windows`` windows of 512 tokens of
WikiText-2 test, in memory (equal to the dense folder, which is lossless) and after loading
the packed folder (float16 values are lossy).

    python benchmarks/storage.py                    # about 15 min on 2 shared cores
    python benchmarks/storage.py --eval-windows 8   # quicker
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import netslim
from _common import SMALL_PROTOCOL, calib_windows, eval_windows, write_results
from netslim.api import CompressionResult
from netslim.eval.size import folder_weight_bytes
from netslim.export.load import read_marker

CONFIGS = {
    "dense (uncompressed)": [],
    "wanda 50%": [{"method": "wanda", "ratio": 0.5}],
    "wanda 2:4": [{"method": "wanda", "pattern": "2:4"}],
    "rtn 4-bit g128": [{"method": "rtn", "bits": 4, "group_size": 128}],
    "rtn 8-bit per-channel": [{"method": "rtn", "bits": 8, "group_size": -1}],
}


def _save_and_load(result: CompressionResult, folder: Path, fmt: str) -> dict:
    start = time.perf_counter()
    netslim.save(result, folder, format=fmt, dtype=torch.float16 if fmt == "packed" else None)
    saved = time.perf_counter()
    loaded = netslim.load(folder)
    marker = read_marker(folder)
    linears = marker["storage"]["summary"]["decoder_linears"]
    return {
        "format": marker["format"],
        "weights_bytes": folder_weight_bytes(folder),
        "linear_bytes": linears["bytes"],
        "linear_weights": linears["weights"],
        "bits_per_weight": linears["bits_per_weight"],
        "by_codec": marker["storage"]["summary"]["by_codec"],
        "save_seconds": saved - start,
        "load_seconds": time.perf_counter() - saved,
        "model": loaded.model,
    }


def run_config(name: str, stages: list, protocol: dict, windows, calib, workdir: Path) -> dict:
    lm = netslim.load_model(protocol["model"])
    result = netslim.compress(lm, stages, calib, progress=False) if stages else CompressionResult(
        lm.model, lm.tokenizer, [], [], None, 0.0, 0, source=protocol["model"])
    row = {"ppl_in_memory": netslim.evaluate(lm.model, data=windows, progress=False).ppl}
    for fmt in ("dense", "packed"):
        saved = _save_and_load(result, workdir / f"{name}-{fmt}".replace(" ", "_").replace("%", ""), fmt)
        model = saved.pop("model")
        if fmt == "packed":
            saved["ppl_after_load"] = netslim.evaluate(model, data=windows, progress=False).ppl
        row[fmt] = saved
    return row


def _table(rows: dict, protocol: dict) -> str:
    lines = [
        f"smollm2-135m artifacts on disk (perplexity: WikiText-2 test, first {protocol['eval_windows']} windows "
        f"of {protocol['seqlen']} tokens; packed: codecs with float16 values)",
        "",
        "| configuration | dense folder (MB) | packed folder (MB) | packed format | decoder Linear bits/weight (dense -> packed) "
        "| ppl in memory | ppl after packed load |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        dense, packed = row["dense"], row["packed"]
        lines.append(
            f"| {name} | {dense['weights_bytes'] / 1e6:.1f} | {packed['weights_bytes'] / 1e6:.1f} | {packed['format']} | "
            f"{dense['bits_per_weight']:.2f} -> {packed['bits_per_weight']:.2f} | {row['ppl_in_memory']:.3f} | "
            f"{packed['ppl_after_load']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-windows", type=int, default=20, help="perplexity windows (WikiText-2 test)")
    parser.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    args = parser.parse_args()
    protocol = {**SMALL_PROTOCOL, "eval_windows": args.eval_windows}
    lm = netslim.load_model(protocol["model"])
    windows = eval_windows(lm, protocol)
    calib = calib_windows(lm, protocol)
    del lm
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, stages in CONFIGS.items():
            if args.only is None or name in args.only:
                rows[name] = run_config(name, stages, protocol, windows, calib, Path(tmp))
    payload = {
        "protocol": {**protocol, "storage": "format=dense: save_pretrained fp32; format=packed: codecs, "
                     "float16 values; sizes are bytes of the *.safetensors files"},
        "results": rows,
    }
    write_results("storage", payload, _table(rows, protocol))


if __name__ == "__main__":
    main()
