"""Benchmark: netslim's GGUF exports against llama.cpp's own quantizer, measured in llama.cpp (issue 15).

Needs the optional extra ``netslim[llamacpp]`` (llama-cpp-python, which compiles llama.cpp).

Protocol (the project's small protocol): smollm2-135m; perplexity on the first 80
non-overlapping windows of 512 tokens of WikiText-2 test, computed by llama.cpp on the same
token ids netslim evaluates (one window per context, every position scored); calibration 64
windows of 512 tokens of WikiText-2 valid, seed 0.

Rows:

- ``llama.cpp <preset>``: llama.cpp's own quantizer (``llama_model_quantize``, no importance
  matrix) applied to netslim's float32 export of the dense model: Q8_0, Q4_0, Q4_K_M, Q3_K_M.
- netslim exports (:data:`CONFIGS`): a fresh dense model compressed by the recipe, exported
  with the given embedding type; the quantized layers keep their codes (GPTQ on a GGUF grid:
  ``gguf: q4_0`` etc.). On smollm2-135m (hidden size 576) a K-quant grid fits only ``ffn_down``
  (1536 inputs); the other projections take its 32-weight fallback (``q4_k`` -> ``q4_1``,
  ``q3_k`` -> ``q4_0``), as llama.cpp's own K-quant presets fall back on this model too.

Columns: file bytes; perplexity in llama.cpp; netslim's PyTorch perplexity of the same file
(loaded by transformers' GGUF loader, which decodes every tensor, so both runtimes evaluate
the same weights; where that loader cannot read the file (the ``deci`` layout of uneven widths,
the compensation biases of width pruning) the compressed PyTorch model itself, marked
"(model)"), and their relative gap; prefill (512 tokens) and decode (64 greedy tokens after 32) tokens per second in
llama.cpp, each row timed side by side with the dense model in the layout of the 4-bit exports
(``llama.cpp Q4_0``: Q4_0 weights, a Q8_0 embedding), their runs alternating, medians of
``--repeats``, ``--threads`` threads. Results accumulate in ``results/gguf.json``:

    nice -n 10 python benchmarks/gguf_llamacpp.py --only "llama.cpp Q4_0" "gptq4 q4_0"
    python benchmarks/gguf_llamacpp.py --speed-only   # time every measured row again, on a quiet machine
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gguf
import torch

import netslim
from _common import RESULTS, dense_baseline, protocol_line, saved_results, write_results
from netslim.bench import bench
from netslim.eval import llamacpp

FILES = RESULTS.parent / "gguf_files"  # the exported files (not committed)
PRESETS = ("Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M")
# llama.cpp's K-quant presets give more bits to attn_v and ffn_down in these layers of a 30-block
# model (its use_more_bits rule: the first and last eighth, and every third block between)
MORE_BITS = [i for i in range(30) if i < 30 // 8 or i >= 7 * 30 // 8 or (i - 30 // 8) % 3 == 2]
LESS_BITS = [i for i in range(30) if i not in MORE_BITS]


def _layers(blocks: list[int], projection: str) -> list[str]:
    return [f"model.layers.{i}.{projection}" for i in blocks]


CONFIGS = {
    "dense q4_0": {"stages": [], "type": "q4_0", "embeddings": "q8_0"},
    "gptq4 q4_0": {"stages": [{"method": "gptq", "gguf": "q4_0"}], "embeddings": "q8_0"},
    "gptq4 q4_0, q4_0 embeddings": {"stages": [{"method": "gptq", "gguf": "q4_0"}], "embeddings": "q4_0"},
    "gptq4 q4_k": {"stages": [{"method": "gptq", "gguf": "q4_k"}], "embeddings": "q8_0"},
    "gptq3 q3_k": {"stages": [{"method": "gptq", "gguf": "q3_k"}], "embeddings": "q8_0"},
    "gptq5 q5_0": {"stages": [{"method": "gptq", "gguf": "q5_0"}], "embeddings": "q8_0"},
    # llama.cpp's Q3_K_M layout on this model (its K-quants fall back on 576-wide rows), each layer by GPTQ
    "gptq 4/5-bit, Q3_K_M layout": {"stages": [
        {"method": "gptq", "gguf": "q4_0", "ignore": ["*.o_proj", "*.v_proj", "*.down_proj"]},
        {"method": "gptq", "gguf": "q5_0", "ignore": ["*.q_proj", "*.k_proj", "*.gate_proj", "*.up_proj", "*.down_proj"]},
        {"method": "gptq", "gguf": "q4_k", "ignore": ["*_attn.*", "*.gate_proj", "*.up_proj"]}], "embeddings": "q8_0"},
    # llama.cpp's Q4_K_M layout on this model: q5_0 (the q4_k fallback) everywhere, q8_0 (the q6_k fallback)
    # for attn_v and q6_k for ffn_down in the MORE_BITS blocks, q4_k for the other ffn_down
    "gptq 5/6/8-bit, Q4_K_M layout": {"stages": [
        {"method": "gptq", "gguf": "q5_0", "ignore": ["*.down_proj", *_layers(MORE_BITS, "self_attn.v_proj")]},
        {"method": "gptq", "gguf": "q8_0",
         "ignore": ["*.q_proj", "*.k_proj", "*.o_proj", "*.mlp.*", *_layers(LESS_BITS, "self_attn.v_proj")]},
        {"method": "gptq", "gguf": "q6_k", "ignore": ["*_attn.*", "*.gate_proj", "*.up_proj",
                                                     *_layers(LESS_BITS, "mlp.down_proj")]},
        {"method": "gptq", "gguf": "q4_k", "ignore": ["*_attn.*", "*.gate_proj", "*.up_proj",
                                                     *_layers(MORE_BITS, "mlp.down_proj")]}], "embeddings": "q8_0"},
    "width 30% + gptq4 q4_0": {"stages": [{"method": "width", "score": "flap", "ratio": 0.3, "neuron_multiple": 32},
                                          {"method": "gptq", "gguf": "q4_0"}], "embeddings": "q8_0"},
    "depth 20% + gptq4 q4_0": {"stages": [{"method": "depth", "score": "block_influence", "ratio": 0.2},
                                          {"method": "gptq", "gguf": "q4_0"}], "embeddings": "q8_0"},
}
REFERENCE = "llama.cpp Q4_0"  # the dense model in the layout of the 4-bit exports: Q4_0, a Q8_0 embedding


def _file(name: str) -> Path:
    return FILES / (name.replace(" ", "_").replace(",", "").replace("%", "pct").replace("+", "plus") + ".gguf")


def same_model_ppl(path: Path, windows) -> float:
    """netslim's PyTorch perplexity of the weights in ``path``, as transformers' GGUF loader decodes them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    return netslim.evaluate(model, data=windows, progress=False).ppl


def speed(path: Path, reference: Path, args) -> dict:
    """llama.cpp prefill/decode figures of ``path`` beside ``reference``, interleaved."""
    results = bench(str(path), runtime="llama.cpp", dense=str(reference), threads=args.threads,
                    repeats=args.repeats)
    model, dense = results["models"]["model"], results["models"]["dense"]
    return {"prefill_tokens_per_s": model["prefill_tokens_per_s"], "decode_tokens_per_s": model["decode_tokens_per_s"],
            "reference_prefill_tokens_per_s": dense["prefill_tokens_per_s"],
            "reference_decode_tokens_per_s": dense["decode_tokens_per_s"],
            "prefill_speedup": results["prefill_speedup"], "decode_speedup": results["decode_speedup"]}


def run_preset(preset: str, f32: Path, windows, args) -> dict:
    out = _file(f"llama.cpp {preset}")
    start = time.perf_counter()
    llamacpp.quantize(f32, out, preset, args.threads)
    seconds = time.perf_counter() - start
    ppl = llamacpp.perplexity(out, windows, args.threads, progress=False).ppl
    return {"kind": "llama.cpp", "preset": preset, "bytes": out.stat().st_size, "llamacpp_ppl": ppl,
            "quantize_seconds": seconds, "weight_types": _types(out)}


def run_config(name: str, run, args) -> dict:
    spec = CONFIGS[name]
    lm = netslim.load_model(run.protocol["model"])
    start = time.perf_counter()
    result = netslim.compress(lm, spec["stages"], run.calib, progress=False) if spec["stages"] else lm
    seconds = time.perf_counter() - start
    torch_ppl = netslim.evaluate(lm, data=run.windows, progress=False).ppl
    out = _file(name)
    summary = netslim.export_gguf(result, out, type=spec.get("type", "auto"), embeddings=spec["embeddings"],
                                  overwrite=True)
    # transformers' GGUF loader reads neither the deci layout nor the biases width pruning adds
    readable = summary["architecture"] != "deci" and not any("biases" in note for note in summary["notes"])
    same = same_model_ppl(out, run.windows) if readable and not args.model_ppl else None
    ppl = llamacpp.perplexity(out, run.windows, args.threads, progress=False).ppl
    return {"kind": "netslim", "stages": spec["stages"], "embeddings": spec["embeddings"], "bytes": summary["bytes"],
            "compress_seconds": seconds, "torch_ppl": torch_ppl, "same_model_torch_ppl": same, "llamacpp_ppl": ppl,
            "exact_layers": sum(1 for t in summary["tensors"] if t.get("exact") and "bits" in t),
            "architecture": summary["architecture"], "weight_types": _types(out)}


def _types(path: Path) -> dict:
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        if len(tensor.shape) == 2:
            counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + 1
    return counts


def table(rows: dict, dense: dict, protocol: dict, args) -> str:
    lines = [
        "| model | MB | llama.cpp ppl | netslim PyTorch ppl (same weights) | gap | prefill tok/s | decode tok/s "
        "| decode vs dense Q4_0 | weight types |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in sorted(rows, key=lambda k: rows[k]["bytes"]):
        r = rows[key]
        same = r.get("same_model_torch_ppl") or r.get("torch_ppl")  # deci files: the model itself (Q8_0 embedding aside)
        gap = f"{r['llamacpp_ppl'] / same - 1:+.2%}" if same else "-"
        same = "-" if not same else f"{same:.2f}" + ("" if r.get("same_model_torch_ppl") else " (model)")
        s = r.get("speed")
        speed = (f"{s['prefill_tokens_per_s']:.0f} | {s['decode_tokens_per_s']:.1f} | {s['decode_speedup']:.2f}x"
                 if s else "- | - | -")
        types = ", ".join(f"{n} {t}" for t, n in sorted(r["weight_types"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {key} | {r['bytes'] / 1e6:.1f} | {r['llamacpp_ppl']:.2f} | {same} | {gap} | {speed} | {types} |")
    lines.append(
        protocol_line(protocol) + f". Dense PyTorch perplexity {dense['ppl']:.2f}. Perplexity by llama.cpp on the same "
        "token ids; 'same weights': the file decoded by transformers' GGUF loader and evaluated by netslim. Speeds: "
        f"llama.cpp (llama-cpp-python), {args.threads} threads, prefill of 512 tokens and greedy decoding of 64 "
        f"after 32, medians of {args.repeats} runs, each row timed side by side with the 'llama.cpp Q4_0' file on a "
        "shared 2-core machine.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [f"llama.cpp {p}" for p in PRESETS] + list(CONFIGS)
    default = [n for n in names if n != "dense q4_0"]
    parser.add_argument("--only", nargs="*", default=None, choices=names, help="rows to run")
    parser.add_argument("--repeats", type=int, default=5, help="timed llama.cpp runs per row (0 skips speed)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default="gguf", help="results name (results/<name>.json), e.g. to run "
                        "rows in a second process; merge them with --merge")
    parser.add_argument("--merge", nargs="*", default=[], help="results names whose rows are added to --results")
    parser.add_argument("--model-ppl", action="store_true", help="compare llama.cpp with the compressed PyTorch "
                        "model itself, not the file read back by transformers (faster; the embedding's rounding aside)")
    parser.add_argument("--speed-only", action="store_true",
                        help="time the rows already measured again (their files kept), nothing else")
    args = parser.parse_args()
    llamacpp.require()
    FILES.mkdir(parents=True, exist_ok=True)
    run = dense_baseline(args.results, quick=False)
    rows = run.rows
    for other in args.merge:
        rows.update(saved_results(other, run.protocol).get("results", {}))
    f32 = FILES / "dense_f32.gguf"
    if not f32.exists():
        netslim.export_gguf(run.dense_lm, f32, type="f32", overwrite=True)
    for name in args.only or default:
        if args.speed_only:
            if name in rows and _file(name).exists():
                rows[name]["speed"] = speed(_file(name), _file(REFERENCE), args)
                write_results(args.results, {"protocol": run.protocol, "threads": args.threads, "repeats": args.repeats,
                                       "dense": run.dense, "results": rows}, table(rows, run.dense, run.protocol, args))
            continue
        if name.startswith("llama.cpp "):
            rows[name] = run_preset(name.split(" ", 1)[1], f32, run.windows, args)
        else:
            rows[name] = run_config(name, run, args)
        if args.repeats:
            if not _file(REFERENCE).exists():
                rows[REFERENCE] = run_preset(REFERENCE.split(" ", 1)[1], f32, run.windows, args)
            rows[name]["speed"] = speed(_file(name), _file(REFERENCE), args)
        write_results(args.results, {"protocol": run.protocol, "threads": args.threads, "repeats": args.repeats,
                               "dense": run.dense, "results": rows}, table(rows, run.dense, run.protocol, args))


if __name__ == "__main__":
    main()
