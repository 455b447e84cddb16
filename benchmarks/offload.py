"""Benchmark: compressing a real checkpoint with --offload against the same job in memory (issue 14).

Each run is one `compress_job` in its own fresh process, one after the other (never two at
once), on a checkpoint converted once beforehand (the conversion is not measured). Peak RSS is
the child's own high-water mark (``ru_maxrss``); seconds are the whole job's wall time (load,
calibration, compression, both evaluations, writing). The offloaded run is repeated inside a
cgroup (v1 or v2) whose hard memory limit is below the checkpoint's float32 size, where the
machine allows creating one (in bfloat16 too, if float32 does not finish under it). Both
unlimited folders are reloaded afterwards and compared tensor by tensor.

    python benchmarks/offload.py                      # gemma3-270m, wanda 50%
    python benchmarks/offload.py --model smollm2-135m --quick
    python benchmarks/offload.py --synthetic          # a random 370M-parameter Llama (1.5 GB in float32)

``--synthetic`` writes a randomly initialized Llama checkpoint (hidden 1024, 16 blocks,
untied head) with smollm2-135m's tokenizer: its perplexities mean nothing, but its fixed costs
(libraries, a 49k-token tokenizer) are small beside its weights, which shows whether the
offloaded job fits under a hard limit below the float32 size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import write_results

RECIPE = [{"method": "wanda", "ratio": 0.5}]
RUNS = {"in memory": {"offload": False}, "offload": {"offload": True}}


def _child(model: str, out: str, offload: bool, dtype: str, calib: int, evals: int) -> None:
    """One job, in this process; prints its measurements as JSON."""
    import time  # noqa: PLC0415

    from netslim.api import peak_rss_bytes  # noqa: PLC0415
    from netslim.engine.execution import Execution  # noqa: PLC0415
    from netslim.job import Protocol, compress_job  # noqa: PLC0415

    protocol = Protocol(calib_windows=calib, eval_windows=evals)
    started = time.perf_counter()
    result = compress_job(model, RECIPE, out, protocol, progress=False, storage_format="packed",
                          execution=Execution(dtype=dtype, offload=offload))
    report = result.report
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes(), "seconds": time.perf_counter() - started,
                      "compress_seconds": report.compress_seconds, "dtype": dtype,
                      "dense_ppl": report.baseline.ppl, "ppl": report.compressed.ppl}))


def _synthetic_checkpoint(folder: Path) -> str:
    """A random 370M-parameter Llama with smollm2-135m's tokenizer, saved as safetensors."""
    import torch  # noqa: PLC0415
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: PLC0415

    from netslim.models.loading import checkpoint_folder  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(checkpoint_folder("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=16,
                         num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _memory_cgroup(limit: int) -> Path | None:
    """A fresh cgroup with a hard memory limit, or ``None`` where this machine allows none."""
    own = Path("/proc/self/cgroup").read_text().splitlines()
    v1 = next((line.split(":", 2)[2] for line in own if ":memory:" in line), None)
    base = Path(f"/sys/fs/cgroup/memory{v1}") if v1 is not None else Path("/sys/fs/cgroup" + own[-1].split("::")[-1])
    group = base / f"netslim-bench-{os.getpid()}"
    try:
        group.mkdir()
        (group / ("memory.limit_in_bytes" if v1 is not None else "memory.max")).write_text(str(limit))
        if v1 is not None and (group / "memory.memsw.limit_in_bytes").exists():
            (group / "memory.memsw.limit_in_bytes").write_text(str(limit))  # no escape into swap
    except OSError:
        return None
    return group


def _run(args, name: str, out: Path, offload: bool, cgroup: Path | None = None, dtype: str | None = None) -> dict:
    command = [sys.executable, __file__, "--child", "--model", args.model, "--out", str(out),
               "--dtype", dtype or args.dtype,
               "--calib-windows", str(args.calib_windows), "--eval-windows", str(args.eval_windows)]
    if offload:
        command.append("--offload")
    preexec = None
    if cgroup is not None:
        def preexec():  # join the cgroup before exec, so the whole child is limited
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=preexec,
                          env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if done.returncode != 0:
        return {"returncode": done.returncode, "error": done.stderr.strip().splitlines()[-1:] or ["killed"]}
    row = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{name}: {row}", flush=True)
    return row


def _same_weights(a: Path, b: Path) -> dict:
    import torch  # noqa: PLC0415

    import netslim  # noqa: PLC0415

    first, second = netslim.load(a).model.state_dict(), netslim.load(b).model.state_dict()
    differing = [k for k in first if k not in second or not torch.equal(first[k], second[k])]
    return {"tensors": len(first), "differing": len(differing), "first_differing": differing[:3]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="8 calibration and 8 evaluation windows")
    parser.add_argument("--synthetic", action="store_true", help="a random 370M-parameter Llama instead of --model")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.calib_windows = args.eval_windows = 8
    if args.child:
        _child(args.model, args.out, args.offload, args.dtype, args.calib_windows, args.eval_windows)
        return
    work = Path(tempfile.mkdtemp(prefix="netslim-offload-bench-"))
    name = args.model
    if args.synthetic:
        args.model, name = _synthetic_checkpoint(work / "synthetic-llama-370m"), "synthetic-llama-370m"
    subprocess.run([sys.executable, "-c", f"import netslim; netslim.load_model({args.model!r})"], check=True)
    from netslim.models.lazy import checkpoint_bytes  # noqa: PLC0415
    from netslim.models.loading import checkpoint_folder  # noqa: PLC0415

    import torch  # noqa: PLC0415

    fp32_bytes = checkpoint_bytes(checkpoint_folder(args.model), torch.float32)
    try:
        rows = {name: _run(args, name, work / name.replace(" ", "-"), **flags) for name, flags in RUNS.items()}
        limit = int(0.9 * fp32_bytes)
        cgroup = _memory_cgroup(limit)
        limited = {"skipped": "no cgroup could be created on this machine"}
        limited_bf16 = {"skipped": "float32 finished under the limit" if cgroup else "no cgroup"}
        if cgroup is not None:
            limited = {"limit_bytes": limit, **_run(args, "offload under the limit", work / "limited", True, cgroup)}
            if "peak_rss_bytes" not in limited and args.dtype != "bfloat16":
                limited_bf16 = {"limit_bytes": limit, **_run(args, "offload bf16 under the limit",
                                                             work / "limited-bf16", True, cgroup, "bfloat16")}
            cgroup.rmdir()
        same = _same_weights(work / "in-memory", work / "offload")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    memory, offload = rows["in memory"], rows["offload"]
    ratio = offload["peak_rss_bytes"] / memory["peak_rss_bytes"]
    payload = {
        "protocol": {"model": name, "recipe": RECIPE, "dtype": args.dtype, "calib_windows": args.calib_windows,
                     "eval_windows": args.eval_windows, "seqlen": 512, "threads": args.threads,
                     "measure": "each job in a fresh process, one after the other; peak RSS = the child's ru_maxrss; seconds = the job's wall time; "
                                "the checkpoint converted beforehand"},
        "checkpoint_fp32_bytes": fp32_bytes,
        "runs": rows,
        "offload_under_limit": limited,
        "offload_bf16_under_limit": limited_bf16,
        "peak_rss_ratio_offload_to_memory": ratio,
        "same_weights": same,
    }
    table = "\n".join([
        "| run | dtype | peak RSS (MB) | x fp32 checkpoint | job seconds | compress seconds | dense ppl | ppl |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *[f"| {name} | {r['dtype']} | {r['peak_rss_bytes'] / 1e6:.0f} | {r['peak_rss_bytes'] / fp32_bytes:.2f} | "
          f"{r['seconds']:.0f} | {r['compress_seconds']:.0f} | {r['dense_ppl']:.3f} | {r['ppl']:.3f} |"
          for name, r in {**rows, "offload under limit": limited,
                          "offload bf16 under limit": limited_bf16}.items() if "peak_rss_bytes" in r],
        "",
        f"Protocol: {name} ({fp32_bytes / 1e6:.0f} MB in float32), wanda 50%, {args.dtype}, "
        f"{args.calib_windows} calibration windows of WikiText-2 valid, first {args.eval_windows} windows of "
        f"WikiText-2 test, seqlen 512, {args.threads} threads; each job in a fresh process, one after the other; "
        f"offload/in-memory peak RSS {ratio:.2f}x; weights identical: {same['differing'] == 0} "
        f"({same['tensors']} tensors); hard limit: {limited.get('limit_bytes', 0) / 1e6:.0f} MB "
        f"({'finished' if 'peak_rss_bytes' in limited else limited}; in bfloat16: "
        f"{'finished' if 'peak_rss_bytes' in limited_bf16 else limited_bf16})",
    ])
    write_results(f"offload_{name}", payload, table)
    print(table)


if __name__ == "__main__":
    main()
