"""Command-line interface, a thin layer over the Python API.

    netslim demo
    netslim compress smollm2-135m --method wanda --ratio 0.5 --out pruned/
    netslim search smollm2-135m --budget size=116MB --out best/
    netslim eval pruned/
    netslim info pruned/
    netslim export pruned/ --to gguf --out pruned.gguf
    netslim bench pruned/ --runtime llama.cpp
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from netslim.errors import NetslimError

app = typer.Typer(
    help="Prune, factorize and quantize language models; measure the cost; export a smaller model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(soft_wrap=True)  # long paths stay on one line (no wrapping at 80 columns)

Seqlen = Annotated[int, typer.Option(help="Tokens per window (calibration and evaluation).")]
EvalFile = Annotated[str, typer.Option("--eval", help="Evaluation text: a UTF-8 .txt file, wikitext2[:test] "
                                       "(packaged) or wikitext2-raw:test (hub).")]
EvalWindows = Annotated[int, typer.Option(help="Evaluate on the first N non-overlapping windows (0 = all).")]
Calib = Annotated[str, typer.Option(help="Calibration text: a UTF-8 .txt file, wikitext2[:valid] "
                                    "(packaged) or wikitext2-raw:valid (hub).")]
CalibWindows = Annotated[int, typer.Option(help="Number of calibration windows.")]
CalibSelect = Annotated[Optional[str], typer.Option(help="How the calibration windows of --calib are chosen: random, "
                                                    "dsir (toward --calib-target) or paser (where a draft of the "
                                                    "compression raised the loss most; a second compression).")]
CalibTarget = Annotated[Optional[str], typer.Option(help="Draw the calibration windows of --calib by DSIR importance "
                                                    "resampling toward this text (your domain).")]
Seed = Annotated[int, typer.Option(help="Seed for drawing calibration windows.")]
Device = Annotated[str, typer.Option(help="Where to compute: cpu, cuda, cuda:N or auto (CUDA if present).")]
Dtype = Annotated[str, typer.Option(help="Weights and forwards in float32, bfloat16 or float16 (statistics are "
                                    "always accumulated in float32).")]
Offload = Annotated[Optional[bool], typer.Option(help="Read, compress, evaluate and write one decoder block at a "
                                                 "time (models larger than memory); default: when the checkpoint "
                                                 "would not fit.")]
BatchSize = Annotated[int, typer.Option(help="Windows per forward in calibration and evaluation (more is faster "
                                        "on a GPU and uses more memory).")]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _run(fn, *args, resumable: bool = False, **kwargs):
    """Call ``fn``; a user error is one line and exit 2, Ctrl-C one line and exit 130."""
    try:
        return fn(*args, **kwargs)
    except NetslimError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        resume = "; finished blocks are kept: run the same command again to resume" if resumable else ""
        typer.echo(f"interrupted{resume}", err=True)
        raise typer.Exit(130) from None


@app.command(
    epilog="Examples:\n\n"
    "  netslim compress smollm2-135m --method wanda --ratio 0.5 --out wanda50/\n\n"
    "  netslim compress smollm2-135m --method magnitude --pattern 2:4 --out mag24/\n\n"
    "  netslim compress ./my-llama --recipe recipe.yaml --calib notes.txt --out slim/\n\n"
    "  netslim compress smollm2-135m --method gptq --set bits=4 --set group_size=128 --out q4/\n\n"
    "  netslim compress smollm2-135m --method gptq --set gguf=q4_0 --out q4/   (llama.cpp's Q4_0 grid)\n\n"
    "  netslim compress smollm2-135m --method sparsegpt --pattern 2:4 --recover lora --out s24/\n\n"
    "  netslim compress efficientnet-lite0 --method channels --ratio 0.3 --set measure=macs --set importance=taylor --out lite/\n\n"
    "  netslim compress all-minilm-l6-v2 --method channels --ratio 0.3 --out minilm/"
)
def compress(
    model: Annotated[str, typer.Argument(help="Local folder, .gguf file, alias (smollm2-135m), hub id, or a "
                                         "vision/encoder model: efficientnet-lite0, all-minilm-l6-v2.")],
    out: Annotated[Path, typer.Option(help="Output folder (must not exist unless --overwrite).")],
    method: Annotated[Optional[str], typer.Option(help="Method name, e.g. wanda or magnitude.")] = None,
    ratio: Annotated[Optional[float], typer.Option(help="How much to remove, in (0, 1): the fraction of weights "
                                                   "(pruning), of parameters (width, low rank), of blocks (depth), "
                                                   "of the hidden size (slicegpt), of parameters or MACs (channels).")] = None,
    sparsity: Annotated[Optional[float], typer.Option(hidden=True)] = None,
    pattern: Annotated[Optional[str], typer.Option(help="'unstructured' or N:M such as 2:4.")] = None,
    settings: Annotated[Optional[list[str]], typer.Option("--set", help="Another setting of --method as KEY=VALUE "
                                                          "(repeatable), e.g. --set bits=4.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="YAML/JSON recipe file instead of --method.")] = None,
    recover: Annotated[Optional[str], typer.Option(help="Fine-tune after compressing, keeping its structure: lora, "
                                                   "norms or masked (distilled from the dense model on "
                                                   "wikitext2:valid; other settings: a recover stage in --recipe).")] = None,
    calib: Calib = "wikitext2:valid",
    eval_file: EvalFile = "wikitext2:test",
    seqlen: Seqlen = 512,
    calib_windows: CalibWindows = 64,
    calib_select: CalibSelect = None,
    calib_target: CalibTarget = None,
    eval_windows: EvalWindows = 80,
    seed: Seed = 0,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    batch_size: BatchSize = 1,
    offload: Offload = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    storage: Annotated[str, typer.Option("--format", help="Storage: 'packed' bit-packs sparse and "
                                         "quantized weights (netslim.load only); 'dense' is plain "
                                         "transformers; 'auto' packs only what needs netslim.load anyway.")] = "auto",
) -> None:
    """Compress MODEL, evaluate it before and after, and write it with report.json/report.md.

    Language models are scored by perplexity; efficientnet-lite0 by agreement with the dense
    model on fixed photos and all-minilm-l6-v2 by similarity benchmarks, with MACs and CPU
    latency before and after.
    """
    from netslim.engine.execution import Execution  # noqa: PLC0415  (keeps --help fast)
    from netslim.job import Protocol, compress_job  # noqa: PLC0415
    from netslim.recipe import load_recipe  # noqa: PLC0415

    if sparsity is not None:
        _fail("--sparsity is now spelled --ratio")
    if recipe is not None and (method or ratio is not None or pattern or settings):
        _fail("give either --recipe or --method/--ratio/--pattern/--set, not both")
    if recipe is None and method is None:
        _fail("give --method (e.g. --method wanda) or --recipe FILE")
    if recipe is not None:
        stages = _run(load_recipe, recipe)
    else:
        extra = _parse_settings(settings or [])
        if "method" in extra:
            _fail("--set method=... is not a setting; choose the method with --method")
        for key, value in (("ratio", ratio), ("pattern", pattern)):
            if value is not None and key in extra:
                _fail(f"--{key} and --set {key}=... both given; give it once")
        stage = {"method": method, **extra}
        stage.update({k: v for k, v in (("ratio", ratio), ("pattern", pattern)) if v is not None})
        stages = [stage]
    if recover is not None:
        stages = [*stages, {"method": "recover", "mode": recover}]
    protocol = _run(Protocol, seqlen, calib, calib_windows, eval_file, eval_windows or None, seed, calib_target,
                    calib_select)
    execution = _run(Execution, device, dtype, batch_size, offload)
    result = _run(compress_job, model, stages, out, protocol, overwrite, storage_format=storage, execution=execution,
                  resumable=True)
    _print_summary(result.report)
    console.print(f"wrote {out}")


@app.command(
    epilog="Examples:\n\n"
    "  netslim search smollm2-135m --budget size=116MB --out best116/\n\n"
    "  netslim search smollm2-135m --budget ppl=1.25x --out small125/\n\n"
    "  netslim search smollm2-135m --budget speedup=1.5x --out fast150/\n\n"
    "  netslim search ./my-llama --budget size=4GB --calib notes.txt --bits 3 --bits 4 --max-minutes 60 --out best/"
)
def search(
    model: Annotated[str, typer.Argument(help="Local folder, .gguf file, alias (smollm2-135m) or hub id of a causal LM.")],
    budget: Annotated[str, typer.Option(help="size=60MB (stored weights; B, KB, MB, GB, KiB, MiB, GiB), ppl=1.25x "
                                        "(perplexity at most this times the dense one, at the smallest size) or "
                                        "speedup=1.5x (prefill at least this much faster, measured here in PyTorch; "
                                        "--bits, --groups and --keep do not apply).")],
    out: Annotated[Path, typer.Option(help="Output folder: model/, pareto.json, pareto.png, report.md.")],
    runtime: Annotated[str, typer.Option(help="Where the model runs: torch (llama.cpp: export the result).")] = "torch",
    bits: Annotated[Optional[list[int]], typer.Option(help="Bit widths of the space (repeatable; default 3 4 8; add 2 with --bits 2).")] = None,
    groups: Annotated[Optional[list[int]], typer.Option(help="Group sizes of the space (repeatable; default 32 64 128).")] = None,
    keep: Annotated[bool, typer.Option(help="Let projections stay in 16-bit float.")] = True,
    max_minutes: Annotated[Optional[float], typer.Option(help="Stop refining after this many minutes (the final "
                                                         "compression still runs).")] = None,
    calib: Calib = "wikitext2:valid",
    eval_file: EvalFile = "wikitext2:test",
    seqlen: Seqlen = 512,
    calib_windows: CalibWindows = 64,
    calib_select: CalibSelect = None,
    calib_target: CalibTarget = None,
    eval_windows: EvalWindows = 80,
    seed: Seed = 0,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    batch_size: BatchSize = 1,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if netslim wrote it.")] = False,
) -> None:
    """Find the best model for a budget: per-layer GPTQ bits and group sizes (size, ppl) or
    per-block attention heads, MLP neurons and blocks removed (speedup), chosen by a solver on
    proxies from one statistics pass, candidates measured on held-out windows, the choice
    compressed for real; writes the model, pareto.json, pareto.png and report.md. An
    interrupted search resumes when run again."""
    from netslim.budget.run import search as run_search  # noqa: PLC0415  (keeps --help fast)
    from netslim.budget.space import BITS, GROUPS, Space  # noqa: PLC0415
    from netslim.engine.execution import Execution  # noqa: PLC0415
    from netslim.job import Protocol  # noqa: PLC0415

    space = _run(Space, tuple(bits or BITS), tuple(groups or GROUPS), keep)
    protocol = _run(Protocol, seqlen, calib, calib_windows, eval_file, eval_windows or None, seed, calib_target,
                    calib_select)
    execution = _run(Execution, device, dtype, batch_size)
    result = _run(run_search, model, budget, out, protocol, space, max_minutes, runtime, overwrite,
                  execution=execution, resumable=True)
    final, chosen = result.pareto["final"], result.chosen
    speed = f", prefill x{final['speedup']:.2f} faster" if "speedup" in final else ""
    console.print(f"chosen: {chosen['label']}: {final['bytes_on_disk'] / 1e6:.2f} MB{speed}, perplexity "
                  f"{final['ppl']:.3f} (dense {final['dense_ppl']:.3f}, x{final['ppl_ratio']:.4f}) on {protocol.eval}")
    console.print(f"wrote {out} (model/, pareto.json, pareto.png, report.md)")


@app.command("eval", epilog="Examples:\n\n  netslim eval smollm2-135m\n\n  netslim eval wanda50/ --eval-windows 0")
def eval_(
    model: Annotated[str, typer.Argument(help="Local folder, netslim output, .gguf file, alias or hub id.")],
    eval_file: EvalFile = "wikitext2:test",
    seqlen: Seqlen = 512,
    eval_windows: EvalWindows = 80,
    device: Device = "cpu",
    dtype: Dtype = "float32",
    batch_size: BatchSize = 1,
) -> None:
    """Perplexity and size of MODEL under the stated protocol."""
    from netslim.api import evaluate  # noqa: PLC0415
    from netslim.engine.execution import Execution  # noqa: PLC0415
    from netslim.export.load import read_marker  # noqa: PLC0415
    from netslim.models.loading import NETSLIM_MARKER, load_model  # noqa: PLC0415

    if (Path(model) / NETSLIM_MARKER).is_file() and _run(read_marker, model).get("format") == "slim_plan":
        _fail(f"'{model}' is a pruned vision/encoder model, not a language model; its scores before and "
              f"after are in its report (netslim info {model})")
    execution = _run(Execution, device, dtype, batch_size)
    _run(execution.torch_device)
    lm = _run(load_model, model, execution.torch_dtype)
    execution.place(lm.model)
    result = _run(evaluate, lm, data=eval_file, seqlen=seqlen, windows=eval_windows or None, batch_size=batch_size)
    if not math.isfinite(result.ppl):
        _fail(f"the perplexity of '{model}' is not finite ({result.ppl}): its outputs overflow or are NaN")
    proto = result.perplexity.protocol()
    console.print(
        f"perplexity {result.ppl:.3f} on {proto['dataset']} (seqlen {proto['seqlen']}, "
        f"{proto['windows']} windows, {proto['tokens']} tokens); parameters {result.size.params:,}, "
        f"non-zero {result.size.nonzero_params:,}; {execution.dtype} on {execution.torch_device()}"
    )


@app.command(epilog="Example:\n\n  netslim info wanda50/")
def info(folder: Annotated[Path, typer.Argument(help="A folder written by netslim compress.")]) -> None:
    """Show the recipe, protocol and results stored in a netslim output folder."""
    from netslim.export.load import read_marker, read_report, weight_files  # noqa: PLC0415

    marker = _run(read_marker, folder)
    report = _run(read_report, folder)
    _run(weight_files, folder, marker)  # a folder whose weights are gone or cut is not shown as fine
    console.print(f"[bold]{folder}[/bold]  format {marker['format']}, netslim {marker['netslim_version']}, source {marker['source']}")
    for stage in marker["recipe"]:
        console.print("  stage: " + json.dumps(stage))
    _print_storage(folder, marker.get("storage", {}).get("summary"))
    if report is not None:
        from netslim.eval.report import Report  # noqa: PLC0415

        try:
            _print_summary(Report.from_dict(report))
        except (KeyError, TypeError, ValueError, AttributeError):
            _fail(f"'{folder / 'report.json'}' lacks the results netslim info shows; the folder is damaged")


@app.command(
    epilog="Examples:\n\n"
    "  netslim export q4/ --to gguf --out q4.gguf\n\n"
    "  netslim export wanda50/ --to gguf --type q8_0 --out wanda50-q8.gguf\n\n"
    "  netslim export wanda50/ --to gguf --type q4_k --embeddings q8_0 --head q6_k --out wanda50-q4k.gguf\n\n"
    "  netslim export smollm2-135m --to gguf --type f16 --out smollm2-f16.gguf"
)
def export(
    source: Annotated[str, typer.Argument(help="A netslim output folder, or any model netslim loads: folder, "
                                          ".gguf file, alias (smollm2-135m), hub id.")],
    out: Annotated[Path, typer.Option(help="Output file, e.g. model.gguf (must not exist unless --overwrite).")],
    to: Annotated[str, typer.Option(help="Output format: gguf (llama.cpp and other GGUF runtimes).")],
    type_: Annotated[str, typer.Option("--type", help="How float (dense or pruned) weights are stored: f32, f16, "
                                       "bf16, q8_0, q6_k, q5_k, q5_1, q5_0, q4_k, q4_1, q4_0, q3_k or auto (f16). "
                                       "Quantized layers keep their codes in the GGUF block type of their grid "
                                       "(Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, or a K-quant for gptq/rtn with "
                                       "gguf=q4_k etc.) where one exists. Rows that K-quants' "
                                       "256-weight blocks do not divide fall back (q4_k -> Q5_0, q6_k -> Q8_0, ...)."
                                       )] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace --out if it exists and netslim exported it.")] = False,
    embeddings: Annotated[Optional[str], typer.Option(help="Type of the token embedding (token_embd); "
                                                      "default: --type.")] = None,
    head: Annotated[Optional[str], typer.Option(help="Type of the output head, unless it is tied to the "
                                                "embedding; default: --type.")] = None,
) -> None:
    """Write SOURCE as one GGUF file, quantized layers exactly where GGUF has their grid."""
    if to != "gguf":
        _fail(f"--to '{to}': the export format is gguf")
    from netslim.export.gguf import export_gguf  # noqa: PLC0415

    summary = _run(export_gguf, source, out, type=type_, overwrite=overwrite, embeddings=embeddings, head=head)
    types: dict[str, int] = {}
    for record in summary["tensors"]:
        types[record["type"]] = types.get(record["type"], 0) + 1
    console.print(f"wrote {out}: {summary['architecture']}, {summary['block_count']} blocks, "
                  f"{summary['bytes'] / 1e6:.2f} MB; tensors " + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    fallbacks: dict[tuple[str, str], list[str]] = {}
    for record in summary["tensors"]:
        if record.get("bits") is not None and record["fallback_reason"]:
            fallbacks.setdefault((record["type"], record["fallback_reason"]), []).append(record["source"])
    for (qtype, reason), names in fallbacks.items():
        console.print(f"  {len(names)} quantized layers dequantized to {qtype} (e.g. {names[0]}): {reason}")
    row_fallbacks: dict[str, list[str]] = {}
    for record in summary["tensors"]:
        if record.get("bits") is None and record["fallback_reason"]:
            row_fallbacks.setdefault(record["fallback_reason"], []).append(record["name"])
    for reason, names in row_fallbacks.items():
        console.print(f"  {len(names)} tensors in a fallback type (e.g. {names[0]}): {reason}")
    tokenizer = summary["tokenizer"]
    console.print(f"  tokenizer: {tokenizer['source'] or 'none'}" + (f" ({tokenizer['note']})" if tokenizer.get("note") else ""))
    for note in summary["notes"]:
        console.print(f"  note: {note}")


@app.command(
    epilog="Examples:\n\n"
    "  netslim bench q4/\n\n"
    "  netslim bench q4.gguf --runtime llama.cpp --threads 2 --out bench.json\n\n"
    "  netslim bench width30/ --runtime llama.cpp --type q8_0\n\n"
    "  netslim bench pruned/ --dense smollm2-135m --prompt-tokens 256 --new-tokens 32"
)
def bench(
    model: Annotated[str, typer.Argument(help="A netslim output folder, a .gguf file, or any model netslim loads.")],
    runtime: Annotated[str, typer.Option(help="torch (netslim's modules) or llama.cpp (needs "
                                         "netslim[llamacpp]; other sources are exported to GGUF first).")] = "torch",
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all torch uses).")] = None,
    dense: Annotated[Optional[str], typer.Option(help="Dense model to time beside it (default: the source "
                                                 "MODEL was made from).")] = None,
    type_: Annotated[Optional[str], typer.Option("--type", help="llama.cpp: GGUF type for exporting what is not "
                                                 "a .gguf file (default: the model's own weight type for the "
                                                 "dense model, auto otherwise).")] = None,
    prompt_tokens: Annotated[int, typer.Option(help="Prompt length for prefill.")] = 512,
    new_tokens: Annotated[int, typer.Option(help="Tokens generated greedily for decode.")] = 64,
    repeats: Annotated[int, typer.Option(help="Timed runs per model (medians reported).")] = 5,
    out: Annotated[Optional[Path], typer.Option(help="Also write the results to this JSON file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace --out if netslim wrote it.")] = False,
) -> None:
    """Prefill and decode tokens per second of MODEL, with its dense model beside it in the same run."""
    from netslim import __version__  # noqa: PLC0415
    from netslim.bench import bench as run_bench  # noqa: PLC0415
    from netslim.bench import check_options  # noqa: PLC0415
    from netslim.export.atomic import write_json_file  # noqa: PLC0415

    _run(check_options, runtime, threads, prompt_tokens, new_tokens, repeats)
    if out is not None and out.exists() and not overwrite:
        _fail(f"'{out}' already exists; choose another --out or pass --overwrite")
    results = _run(run_bench, model, runtime=runtime, threads=threads, dense=dense, prompt_tokens=prompt_tokens,
                   new_tokens=new_tokens, repeats=repeats, gguf_type=type_)
    results = {"netslim_bench": __version__, **results}
    table = Table(title=f"{runtime}, {results['threads']} threads: prefill of {prompt_tokens} tokens, "
                  f"decode of {new_tokens} (medians of {repeats})")
    for column in ("", "source", "prefill tok/s", "decode tok/s", "ms / token"):
        table.add_column(column, justify="right")
    for name, entry in results["models"].items():
        table.add_row(name, entry["source"], f"{entry['prefill_tokens_per_s']:.1f}",
                      f"{entry['decode_tokens_per_s']:.1f}", f"{entry['ms_per_generated_token']:.2f}")
    console.print(table)
    if "prefill_speedup" in results:
        console.print(f"speed-up over dense: prefill {results['prefill_speedup']:.2f}x, "
                      f"decode {results['decode_speedup']:.2f}x")
    if out is not None:
        _run(write_json_file, out, results, overwrite, "netslim_bench")
        console.print(f"wrote {out}")


@app.command(epilog="Example:\n\n  netslim demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("netslim-demo"),
    overwrite: Annotated[bool, typer.Option(help="Replace the output folder if it exists.")] = True,
) -> None:
    """Prune smollm2-135m with Wanda at 50% under the small protocol and print before/after."""
    from netslim.job import Protocol, compress_job  # noqa: PLC0415

    console.print("netslim demo: Wanda 50% on SmolLM2-135M, WikiText-2 (seqlen 512, 64 calibration / 80 test windows)")
    result = _run(compress_job, "smollm2-135m", [{"method": "wanda", "ratio": 0.5}], out, Protocol(), overwrite,
                  resumable=True)
    _print_summary(result.report)
    console.print(f"wrote {out} (model, recipe.yaml, report.json, report.md)")


def _parse_settings(items: list[str]) -> dict:
    """``KEY=VALUE`` strings as a dict; values read as YAML (numbers, booleans, lists)."""
    import yaml  # noqa: PLC0415

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--set expects KEY=VALUE, e.g. --set bits=4; got '{item}'")
        try:  # "2:4" stays a string (YAML 1.1 would read it as the base-60 number 124)
            out[key.strip()] = value if ":" in value else yaml.safe_load(value)
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def _print_storage(folder: Path, summary: dict | None) -> None:
    from netslim.eval.size import folder_weight_bytes  # noqa: PLC0415

    console.print(f"  weights on disk: {folder_weight_bytes(folder) / 1e6:.2f} MB")
    if summary is None:  # written by a netslim without storage summaries
        return
    linears = summary["decoder_linears"]
    if linears["weights"]:
        console.print(f"  decoder Linear weights: {linears['weights']:,} weights in {linears['bytes'] / 1e6:.2f} MB, "
                      f"{linears['bits_per_weight']:.2f} bits per weight")
    for codec, entry in sorted(summary["by_codec"].items()):
        console.print(f"  {codec:>8}: {entry['tensors']:4d} tensors, {entry['bytes'] / 1e6:8.2f} MB")


def _print_summary(typed) -> None:
    """The before/after table of a :class:`netslim.eval.report.Report`."""
    report = typed.as_dict()
    if typed.kind == "channels":
        _print_channels_summary(report)
        return
    proto = report["protocol"]
    table = Table(title=f"{report['model']}: perplexity on {proto['dataset']} "
                  f"(seqlen {proto['seqlen']}, {proto['windows']} windows, {proto['tokens']} tokens)")
    for column in ("", "perplexity", "parameters", "non-zero", "seconds"):
        table.add_column(column, justify="right")
    base, comp = report["baseline"], report["compressed"]
    table.add_row("dense", _ppl(base["ppl"]), f"{base['params']:,}", f"{base['nonzero_params']:,}", "")
    table.add_row("compressed", _ppl(comp["ppl"]), f"{comp['params']:,}", f"{comp['nonzero_params']:,}",
                  f"{report['compress_seconds']:.1f}")
    console.print(table)


def _ppl(value: float | None) -> str:
    return "not finite" if value is None else f"{value:.3f}"


def _print_channels_summary(report: dict) -> None:
    base, comp = report["baseline"], report["compressed"]
    table = Table(title=f"{report['model']}: {report['params_removed']:.1%} of parameters and "
                  f"{report['macs_removed']:.1%} of MACs removed, {report['speedup']:.2f}x faster on CPU")
    for column in ("", "dense", "pruned"):
        table.add_column(column, justify="right")
    table.add_row("parameters", f"{base['params']:,}", f"{comp['params']:,}")
    table.add_row("MACs", f"{base['macs']:,}", f"{comp['macs']:,}")
    table.add_row("CPU latency (ms)", f"{base['latency_ms']:.2f}", f"{comp['latency_ms']:.2f}")
    for metric, value in base["scores"].items():
        table.add_row(metric, f"{value:.4f}", f"{comp['scores'][metric]:.4f}")
    console.print(table)


def main() -> None:
    """The ``netslim`` command: like ``app()``, but a usage mistake (a value that does not
    parse, an unknown option or command) is one ``error:`` line with exit status 2, as every
    other mistake."""
    import sys  # noqa: PLC0415

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except typer.TyperException as exc:  # click's usage errors, as typer ships them
        if type(exc).__name__ == "NoArgsIsHelpError" or not hasattr(exc, "format_message"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        ctx = getattr(exc, "ctx", None)
        hint = f" (see netslim {ctx.info_name} --help)" if ctx is not None and ctx.parent is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    sys.exit(code if isinstance(code, int) else 0)
