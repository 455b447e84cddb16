"""Benchmark: netslim SparseGPT and GPTQ side by side with the reference implementations (issue 3).

The reference layer classes (``SparseGPT.fasterprune`` of IST-DASLab/sparsegpt, ``GPTQ.fasterquant``
with its ``Quantizer`` of IST-DASLab/gptq) are imported unmodified from local checkouts of those
repositories and driven block by block as their ``llama.py`` drives them: SparseGPT calibrates
all projections of a block at once, GPTQ goes true-sequentially through q/k/v, o, up/gate, down.
Both sides get the same model, the same calibration tensor and the same evaluation windows.

Each side runs in its own fresh process, one after the other: compression seconds are wall
time of the whole calibrate-and-compress loop, peak memory is the high-water mark of resident
memory *during compression* (reset just before it through ``/proc/self/clear_refs``), and
perplexity is computed by netslim's evaluator for both.

    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt
    git clone https://github.com/IST-DASLab/gptq /tmp/gptq
    python benchmarks/reference_second_order.py --sparsegpt-repo /tmp/sparsegpt --gptq-repo /tmp/gptq
    python benchmarks/reference_second_order.py ... --only sparsegpt50 --quick
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

import netslim
from _common import calib_windows, eval_windows, protocol_for, protocol_line, saved_results, write_results

CONFIGS = {
    "sparsegpt50": {"method": "sparsegpt", "ratio": 0.5},
    "sparsegpt24": {"method": "sparsegpt", "pattern": "2:4"},
    "gptq4": {"method": "gptq", "bits": 4, "group_size": 128},
    "gptq3": {"method": "gptq", "bits": 3, "group_size": 128},
}
LABELS = {"sparsegpt50": "sparsegpt 50%", "sparsegpt24": "sparsegpt 2:4",
          "gptq4": "gptq 4-bit g128", "gptq3": "gptq 3-bit g128"}
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


def _reference_compress(model: torch.nn.Module, stage: dict, calib, repo: Path) -> None:
    """Compress ``model`` in place with the reference layer classes, as their llama.py does."""
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
                    n, m = (2, 4) if "pattern" in stage else (0, 0)
                    obj.fasterprune(stage.get("ratio", 0.5), prunen=n, prunem=m, blocksize=128, percdamp=0.01)
                else:
                    obj.fasterquant(blocksize=128, percdamp=0.01, groupsize=stage["group_size"], actorder=False)
                obj.free()
        hidden = run_block(block, hidden, calls[i])


def run_side(config: str, side: str, repo: Path | None, quick: bool) -> dict:
    """Compress with one side in this process; seconds, peak RSS during compression, perplexity."""
    protocol = protocol_for(quick)
    lm = netslim.load_model(protocol["model"])
    calib = calib_windows(lm, protocol)
    stage = CONFIGS[config]
    _reset_peak_rss()
    before = _peak_rss_bytes()
    start = time.perf_counter()
    with torch.no_grad():
        if side == "reference":
            _reference_compress(lm.model, stage, calib, repo)
        else:
            netslim.compress(lm, stage, calib, progress=False)
    seconds = time.perf_counter() - start
    peak = _peak_rss_bytes()
    ppl = netslim.evaluate(lm, data=eval_windows(lm, protocol), progress=False).ppl
    return {"ppl": ppl, "compress_seconds": seconds, "rss_before_bytes": before, "peak_rss_bytes": peak}


def table(rows: dict, protocol: dict) -> str:
    lines = ["| configuration | ppl reference | ppl netslim | ratio | seconds ref / ours | peak RSS GB ref / ours |",
             "|---|---:|---:|---:|---:|---:|"]
    for config, r in rows.items():
        ref, ours = r["reference"], r["netslim"]
        lines.append(f"| {LABELS[config]} | {ref['ppl']:.2f} | {ours['ppl']:.2f} | {r['ppl_ratio']:.3f} | "
                     f"{ref['compress_seconds']:.0f} / {ours['compress_seconds']:.0f} | "
                     f"{ref['peak_rss_bytes'] / 1e9:.2f} / {ours['peak_rss_bytes'] / 1e9:.2f} |")
    lines.append(
        protocol_line(protocol) + f", the same tensor for both sides; fp32, CPU, {torch.get_num_threads()} threads; "
        "each side in its own process, one after the other; peak RSS measured during compression only.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsegpt-repo", type=Path, help="checkout of IST-DASLab/sparsegpt")
    parser.add_argument("--gptq-repo", type=Path, help="checkout of IST-DASLab/gptq")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), default=None)
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(run_side(*args.worker, args.repo, args.quick)))
        return
    name = "reference_second_order" + ("_quick" if args.quick else "")
    rows = saved_results(name).get("results", {})
    for config in args.only or list(CONFIGS):
        repo = args.sparsegpt_repo if config.startswith("sparsegpt") else args.gptq_repo
        if repo is None or not repo.is_dir():
            parser.error(f"{config} needs --{'sparsegpt' if config.startswith('sparsegpt') else 'gptq'}-repo "
                         "pointing at a checkout of the reference repository")
        sides = {}
        for side in ("reference", "netslim"):
            command = [sys.executable, __file__, "--worker", config, side, "--repo", str(repo.resolve())]
            done = subprocess.run(command + (["--quick"] if args.quick else []), capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"{config} / {side} failed:\n{done.stderr[-3000:]}")
            sides[side] = json.loads(lines[-1][len("RESULT "):])
            print(config, side, sides[side], flush=True)
        rows[config] = {**sides, "ppl_ratio": sides["netslim"]["ppl"] / sides["reference"]["ppl"],
                        "seconds_ratio": sides["netslim"]["compress_seconds"] / sides["reference"]["compress_seconds"],
                        "peak_rss_ratio": sides["netslim"]["peak_rss_bytes"] / sides["reference"]["peak_rss_bytes"]}
        protocol = protocol_for(args.quick)
        write_results(name, {
            "what": "netslim against the unmodified reference layer classes of IST-DASLab/sparsegpt and "
                    "IST-DASLab/gptq, driven as their llama.py does (see the script's docstring)",
            "protocol": {**protocol, "settings": "damping 1% of the mean diagonal, blocks of 128 columns; GPTQ "
                         "asymmetric, per-channel grids within groups of 128, no act-order"},
            "results": rows,
        }, table(rows, protocol))


if __name__ == "__main__":
    main()
