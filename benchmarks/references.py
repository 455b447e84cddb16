"""Benchmark: netslim's Wanda, SparseGPT and GPTQ side by side with the reference implementations (issue 14).

The references run unmodified from local checkouts, driven as their own scripts drive them:

- Wanda: ``lib.prune.prune_wanda`` of locuslab/wanda, called as its ``main.py`` calls it. Two
  shims adapt its surroundings, not its code: its data loader (C4, offline here) is replaced by
  the same calibration windows netslim gets, and each decoder block receives the rotary
  embeddings that transformers 5 blocks take as an argument (the reference passes position ids
  only). Its ``lib.data`` imports ``datasets``, which is stubbed (never called).
- SparseGPT and GPTQ: the layer classes ``SparseGPT.fasterprune`` (IST-DASLab/sparsegpt) and
  ``GPTQ.fasterquant`` with its ``Quantizer`` (IST-DASLab/gptq), driven block by block as their
  ``llama.py`` drives them: SparseGPT calibrates every projection of a block at once, GPTQ goes
  true-sequentially through q/k/v, o, up/gate, down; one full block forward per window and
  subset, then one more for the block's output.

Both sides get the same model, the same calibration tensor and the same evaluation windows;
each side runs in a fresh process, one job at a time, with the same number of threads.
Compression seconds are the wall time of the whole calibrate-and-compress call; peak memory is
the high-water mark of resident memory during compression (reset just before it through
``/proc/self/clear_refs``); perplexity is netslim's evaluator on both. netslim also runs in
bfloat16 (weights and forwards; statistics and solves in float32) beside its float32 run.

    git clone https://github.com/locuslab/wanda /tmp/wanda
    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt
    git clone https://github.com/IST-DASLab/gptq /tmp/gptq
    python benchmarks/references.py --wanda-repo /tmp/wanda --sparsegpt-repo /tmp/sparsegpt --gptq-repo /tmp/gptq
    python benchmarks/references.py ... --only wanda50 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

import netslim
from _common import calib_windows, eval_windows, protocol_for, protocol_line, saved_results, write_results

CONFIGS = {
    "wanda50": {"method": "wanda", "ratio": 0.5},
    "sparsegpt50": {"method": "sparsegpt", "ratio": 0.5},
    "gptq4": {"method": "gptq", "bits": 4, "group_size": 128},
}
LABELS = {"wanda50": "wanda 50%", "sparsegpt50": "sparsegpt 50%", "gptq4": "gptq 4-bit g128"}
METHODS = ("wanda", "sparsegpt", "gptq")  # each needs --<method>-repo, a checkout of its reference
SIDES = ("reference", "netslim", "netslim-bf16")
# The order in which the reference llama.py calibrates the projections of a block with GPTQ.
TRUE_SEQUENTIAL = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                   ["mlp.up_proj", "mlp.gate_proj"], ["mlp.down_proj"]]


def _reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reference_wanda(model: torch.nn.Module, stage: dict, calib, repo: Path) -> None:
    """``prune_wanda`` of locuslab/wanda, unmodified, on ``calib``'s windows."""
    sys.modules.setdefault("datasets", types.ModuleType("datasets")).load_dataset = None  # lib.data imports it
    sys.path.insert(0, str(repo))
    import lib.prune as reference  # noqa: PLC0415

    windows = [(calib.ids[j:j + 1], None) for j in range(calib.ids.shape[0])]
    reference.get_loaders = lambda *args, **kwargs: (windows, None)
    rotary = model.model.rotary_emb

    def with_rotary(_block, args, kwargs):  # transformers 5 blocks take the rotary embeddings as an argument
        if kwargs.get("position_embeddings") is None:
            kwargs["position_embeddings"] = rotary(args[0], kwargs["position_ids"])
        return args, kwargs

    handles = [block.register_forward_pre_hook(with_rotary, with_kwargs=True) for block in model.model.layers]
    model.seqlen, model.hf_device_map = calib.ids.shape[1], {}
    args = types.SimpleNamespace(nsamples=calib.ids.shape[0], seed=0, sparsity_ratio=stage["ratio"], use_variant=False)
    try:
        reference.prune_wanda(args, model, None, device=torch.device("cpu"))
    finally:
        for handle in handles:
            handle.remove()


def _reference_second_order(model: torch.nn.Module, stage: dict, calib, repo: Path) -> None:
    """SparseGPT or GPTQ with the reference layer classes, as their llama.py drives them."""
    from netslim.engine.capture import capture_block_inputs, run_block  # noqa: PLC0415
    from netslim.models.adapter import ModelAdapter  # noqa: PLC0415

    torch.cuda.synchronize = lambda *a, **k: None  # the reference calls it for its own timing only
    sys.path.insert(0, str(repo))
    is_sparsegpt = stage["method"] == "sparsegpt"
    if is_sparsegpt:
        from sparsegpt import SparseGPT as LayerClass  # noqa: PLC0415
    else:
        from gptq import GPTQ as LayerClass  # noqa: PLC0415
        from quant import Quantizer  # noqa: PLC0415
    adapter = ModelAdapter.from_model(model)
    hidden, calls = capture_block_inputs(adapter, calib.ids)
    subsets = [sum(TRUE_SEQUENTIAL, [])] if is_sparsegpt else TRUE_SEQUENTIAL
    for i, block in enumerate(adapter.blocks):
        for subset in subsets:
            layers = {name: LayerClass(block.get_submodule(name)) for name in subset}
            if not is_sparsegpt:
                for obj in layers.values():
                    obj.quantizer = Quantizer()
                    obj.quantizer.configure(stage["bits"], perchannel=True, sym=False, mse=False)
            handles = [block.get_submodule(name).register_forward_hook(
                lambda _m, inp, out, obj=obj: obj.add_batch(inp[0].data, out.data)) for name, obj in layers.items()]
            for w in range(hidden.shape[0]):
                run_block(block, hidden[w:w + 1], calls[i])
            for handle in handles:
                handle.remove()
            for obj in layers.values():
                if is_sparsegpt:
                    obj.fasterprune(stage["ratio"], prunen=0, prunem=0, blocksize=128, percdamp=0.01)
                else:
                    obj.fasterquant(blocksize=128, percdamp=0.01, groupsize=stage["group_size"], actorder=False)
                obj.free()
        hidden = run_block(block, hidden, calls[i])


def run_side(config: str, side: str, repo: Path | None, quick: bool) -> dict:
    """Compress with one side in this process; seconds, peak RSS during compression, perplexity."""
    protocol = protocol_for(quick)
    dtype = torch.bfloat16 if side == "netslim-bf16" else torch.float32
    lm = netslim.load_model(protocol["model"], dtype=dtype)
    calib = calib_windows(lm, protocol)
    stage = CONFIGS[config]
    _reset_peak_rss()
    before = _peak_rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        if side != "reference":
            netslim.compress(lm, stage, calib, progress=False)
        elif stage["method"] == "wanda":
            _reference_wanda(lm.model, stage, calib, repo)
        else:
            _reference_second_order(lm.model, stage, calib, repo)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    ppl = netslim.evaluate(lm, data=eval_windows(lm, protocol), progress=False).ppl
    return {"ppl": ppl, "compress_seconds": seconds, "rss_before_bytes": before, "peak_rss_bytes": peak,
            "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads()}


def table(rows: dict, protocol: dict, threads: int) -> str:
    lines = ["| configuration | ppl reference | ppl netslim (fp32 / bf16) | ppl ratio (fp32 / bf16) | seconds reference "
             "| seconds netslim (fp32 / bf16) | time ratio (fp32 / bf16) | peak RSS GB ref / fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for config, r in rows.items():
        ref, ours, bf16 = r["reference"], r["netslim"], r["netslim-bf16"]
        lines.append(
            f"| {LABELS[config]} | {ref['ppl']:.2f} | {ours['ppl']:.2f} / {bf16['ppl']:.2f} | "
            f"{r['ppl_ratio']:.3f} / {r['bf16_ppl_ratio']:.3f} | {ref['compress_seconds']:.0f} | "
            f"{ours['compress_seconds']:.0f} / {bf16['compress_seconds']:.0f} | "
            f"{r['seconds_ratio']:.2f}x / {r['bf16_seconds_ratio']:.2f}x | "
            f"{ref['peak_rss_bytes'] / 1e9:.2f} / {ours['peak_rss_bytes'] / 1e9:.2f} |")
    lines.append(
        protocol_line(protocol) + f", the same tensor for every side; CPU, {threads} threads; each side in a fresh "
        "process, one after the other; the reference and netslim in float32, then netslim in bfloat16 (statistics "
        "and solves in float32); peak RSS measured during compression only.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in METHODS:
        parser.add_argument(f"--{name}-repo", type=Path, help=f"checkout of the reference {name} repository")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), default=None)
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of every side (default 2)")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_side(*args.worker, args.repo, args.quick)))
        return
    name = "references" + ("_quick" if args.quick else "")
    protocol = protocol_for(args.quick)
    rows = saved_results(name, protocol).get("results", {})
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    for config in args.only or list(CONFIGS):
        option = CONFIGS[config]["method"]
        repo = getattr(args, f"{option}_repo")
        if repo is None or not repo.is_dir():
            parser.error(f"{config} needs --{option}-repo pointing at a checkout of the reference repository")
        sides = {}
        for side in SIDES:
            command = [sys.executable, __file__, "--worker", config, side, "--repo", str(repo.resolve())]
            done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True,
                                  env=env)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{config} / {side} failed:\n{done.stderr[-3000:]}")
            sides[side] = json.loads(lines[-1][len("RESULT "):])
            print(config, side, sides[side], flush=True)
        ref = sides["reference"]
        rows[config] = {**sides,
                        **{f"{prefix}{key}_ratio": sides[side][field] / ref[field]
                           for prefix, side in (("", "netslim"), ("bf16_", "netslim-bf16"))
                           for key, field in (("ppl", "ppl"), ("seconds", "compress_seconds"),
                                              ("peak_rss", "peak_rss_bytes"))}}
        write_results(name, {
            "what": "netslim against the unmodified reference implementations of Wanda (locuslab/wanda), "
                    "SparseGPT (IST-DASLab/sparsegpt) and GPTQ (IST-DASLab/gptq), driven as their own scripts "
                    "drive them (see the script's docstring)",
            "protocol": protocol,
            "settings": {"threads": args.threads, "wanda": "unstructured, per output row", "sparsegpt": "unstructured, "
                         "damping 1% of the mean diagonal, blocks of 128 columns", "gptq": "asymmetric, per-channel "
                         "grids within groups of 128, no act-order, damping 1%, blocks of 128, true-sequential"},
            "results": rows,
        }, table(rows, protocol, args.threads))


if __name__ == "__main__":
    main()
