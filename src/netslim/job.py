"""The end-to-end job behind ``netslim compress`` and ``netslim demo``, for every kind of model.

Check everything that can be checked before work, load the model, measure the dense baseline,
compress, measure again under the same protocol, and write the model with its recipe and its
:class:`~netslim.eval.report.Report` through :func:`netslim.save`. Causal LMs go through the
calibration engine and are measured by perplexity; vision and encoder models of the zoo
(:mod:`netslim.models.tasks`) are pruned through their dependency graph (``channels`` stages)
and measured by their task scores, MACs and CPU latency (dense and pruned timed alternately).
The input is only ever read.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from netslim.api import CompressionResult, calibration, check_finite, compress, evaluate, peak_rss_bytes
from netslim.data import resolve_text
from netslim.data.select import calibration_selection, check_disjoint
from netslim.engine.distributed import is_writer, join_from_env, world_size
from netslim.engine.execution import Execution, available_memory_bytes
from netslim.engine.sequential import check_llm_stages
from netslim.errors import ConfigError, NetslimError
from netslim.eval.flops import count_macs
from netslim.eval.latency import interleaved_ms
from netslim.eval.report import Measurement, Report
from netslim.eval.size import count_params
from netslim.export.atomic import check_output, check_writable
from netslim.export.load import read_marker
from netslim.export.save import FORMATS, round_for_storage, save
from netslim.graph.plan import SlimPlan
from netslim.methods.base import FLOAT, MethodConfig, Scope
from netslim.methods.preflight import check_recipe, check_seqlen, meta_adapter, model_shape
from netslim.models.adapter import ModelAdapter
from netslim.models.folder import LoadedModel
from netslim.models.lazy import checkpoint_bytes
from netslim.models.loading import NETSLIM_MARKER, cache_dir, checkpoint_folder, load_model, read_model_config
from netslim.models.tasks import ModelTask, is_task_model, load_task
from netslim.offload import check_offload, offload_job
from netslim.recipe import RecipeLike, parse_recipe, recipe_data

LATENCY_RUNS, LATENCY_WARMUP = 10, 3
OFFLOAD_FRACTION = 0.6  # offload=None streams a checkpoint larger than this share of the free memory


@dataclass(frozen=True)
class Protocol:
    """How quality is measured and where calibration data comes from.

    The defaults are the small protocol of the project (seqlen 512, 64 calibration windows of
    WikiText-2 valid with seed 0, the first 80 windows of WikiText-2 test). ``calib_select``
    chooses the calibration windows of ``calib`` (:func:`netslim.calibration`): at random, by
    DSIR toward ``calib_target``, or by PASER after a draft of the recipe.
    """

    seqlen: int = 512
    calib: str = "wikitext2:valid"
    calib_windows: int = 64
    eval: str = "wikitext2:test"
    eval_windows: int | None = 80
    seed: int = 0
    calib_target: str | None = None
    calib_select: str | None = None

    def __post_init__(self) -> None:
        calibration_selection(self.calib_select, self.calib_target, drafted=True)
        if self.seqlen < 2:
            raise ConfigError(f"seqlen={self.seqlen}: a window needs at least 2 tokens")
        if self.calib_windows < 1:
            raise ConfigError(f"calib_windows={self.calib_windows}: use at least 1")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise ConfigError(f"eval_windows={self.eval_windows}: use at least 1, or None for all")


def compress_job(
    source: str,
    recipe: RecipeLike,
    out: str | os.PathLike | None,
    protocol: Protocol = Protocol(),
    overwrite: bool = False,
    progress: bool = True,
    storage_format: str = "auto",
    threads: int | None = None,
    execution: Execution = Execution(),
) -> CompressionResult:
    """Run the whole job on any model; ``out=None`` skips writing. Returns the result with its report.

    Everything that can be checked before the model's weights are read is checked first (the
    recipe against the model's config, the output folder, the texts, the window length), and
    the rest before the baseline is measured, so a mistake costs seconds, not minutes.

    Args:
        protocol: How a causal LM is calibrated and evaluated (vision and encoder models are
            scored by their zoo task).
        storage_format: ``format`` of :func:`netslim.save` (``"auto"``, ``"dense"`` or
            ``"packed"``); a graph-pruned model is stored dense.
        threads: CPU threads for the latency of a graph-pruned model (``None`` keeps torch's).
        execution: The device, dtype and batch size a causal LM is loaded, compressed and
            evaluated with (a graph-pruned model runs in float32 on the CPU).

    Raises:
        NetslimError: one line saying what to change, before any expensive work.
    """
    stages = parse_recipe(recipe)
    graph = is_task_model(source)
    # a device this machine lacks fails here, before any work; under torchrun, join its process group
    join_from_env(cuda=execution.torch_device().type == "cuda")
    if world_size() > 1:
        _check_distributable_job(stages, graph, execution)
        progress = progress and is_writer()
    check_stage_kinds(source, stages, graph)
    if storage_format not in FORMATS:
        raise ConfigError(f"storage format '{storage_format}': use one of {', '.join(FORMATS)}")
    if graph and storage_format == "packed":
        raise ConfigError(f"{source} is stored as a dense pruned model; use --format auto or dense")
    if graph and (execution.offload or (execution.device, execution.dtype, execution.batch_size) != ("cpu", "float32", 1)):
        raise ConfigError(f"{source} is pruned in float32 on the CPU; leave out --device, --dtype, --batch-size "
                          "and --offload")
    offload = not graph and _offloads(source, stages, protocol, execution, storage_format)
    if offload:
        check_offload(stages, protocol.calib_select, storage_format, out)
    if out is not None:
        check_output(out, overwrite, inputs=[source] if graph else _text_inputs(stages, protocol, source))
        check_writable(cache_dir(), "the netslim cache ($NETSLIM_CACHE)")
    if graph:
        result = _graph_run(load_task(source), stages, threads)
    elif offload:
        _check_texts(stages, protocol)
        config = read_model_config(checkpoint_folder(source))
        _preflight(stages, protocol, config, meta_adapter(config), None, storage_format)
        return offload_job(source, stages, protocol, execution, out, overwrite, progress)
    else:
        result = _language_run(source, stages, protocol, progress, storage_format, out, execution)
    if out is not None and is_writer():  # under several processes, rank 0 writes the one folder
        save(result, out, overwrite=overwrite, format=storage_format)
        if not graph:
            shutil.rmtree(_checkpoint_dir(out), ignore_errors=True)
    return result


def _check_distributable_job(stages: list[MethodConfig], graph: bool, execution: Execution) -> None:
    """Refuse, under several processes, what a job cannot split over them.

    Raises:
        ConfigError: one line naming what to leave out.
    """
    if graph:
        raise ConfigError("channel pruning of vision and encoder models runs in one process; run it without torchrun")
    if execution.offload:
        raise ConfigError("--offload streams one block at a time in one process; leave it out under torchrun")
    if any(cfg.scope is Scope.MODEL for cfg in stages):
        raise ConfigError("recover fine-tunes in one process; compress under torchrun, then recover the output "
                          "without it")


def _text_inputs(stages: list[MethodConfig], protocol: Protocol, source: str) -> list[str]:
    """The model and every text the job reads (an output may not lie inside or around any)."""
    texts = [protocol.calib, protocol.eval, protocol.calib_target]
    texts += [t for stage in stages for t in stage.texts()]
    return [source, *(t for t in texts if t)]


def check_stage_kinds(source: str, stages: list[MethodConfig], graph: bool) -> None:
    """Refuse stages made for the other kind of model, naming what the model takes.

    Raises:
        ConfigError: a causal-LM stage for a vision or encoder model, or the reverse.
    """
    if not graph:
        check_llm_stages(stages)
        return
    for cfg in stages:
        if cfg.scope is not Scope.GRAPH:
            raise ConfigError(f"method '{cfg.method}' needs a causal LM; {source} takes method channels "
                              "(e.g. --method channels --ratio 0.3 --set measure=macs)")


def _offloads(source: str, stages: list[MethodConfig], protocol: Protocol, execution: Execution,
              storage_format: str) -> bool:
    """Whether the job streams blocks from the checkpoint: as asked, or (``offload=None``) when
    a local checkpoint would not fit in the memory available and the recipe can be streamed."""
    if execution.offload is not None or world_size() > 1:
        return bool(execution.offload)
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file() or (folder / NETSLIM_MARKER).is_file():
        return False
    needed, available = checkpoint_bytes(folder, execution.torch_dtype), available_memory_bytes()
    if available is None or needed < OFFLOAD_FRACTION * available:
        return False
    try:
        check_offload(stages, protocol.calib_select, storage_format, "out")
    except ConfigError:
        return False  # the recipe needs the whole model; try in memory
    return True


def _language_run(source: str, stages: list[MethodConfig], protocol: Protocol, progress: bool,
                  storage_format: str, out, execution: Execution) -> CompressionResult:
    """Load, measure, calibrate, compress and measure a causal LM."""
    needs_calibration = any(stage.needs_calibration for stage in stages)
    _check_texts(stages, protocol)
    saved = _saved_config(source)
    if saved is not None:  # a local folder: check the recipe on its config, before reading weights
        config, modules = saved
        _preflight(stages, protocol, config, meta_adapter(config), modules, storage_format)
    lm = load_model(source, execution.torch_dtype)
    execution.place(lm.model)
    if saved is None:
        _preflight(stages, protocol, lm.model.config, ModelAdapter.from_model(lm.model), None, storage_format)
    if lm.tokenizer is None:
        raise ConfigError(f"model '{source}' has no tokenizer; netslim needs one to read the calibration and "
                          "evaluation text: add the tokenizer files to the folder")
    evaluation = dict(data=protocol.eval, seqlen=protocol.seqlen, windows=protocol.eval_windows, progress=progress,
                      batch_size=execution.batch_size)
    baseline = evaluate(lm, **evaluation)  # refuses NaN/inf weights before any forward
    if not math.isfinite(baseline.ppl):
        raise NetslimError(f"model '{source}' has a non-finite perplexity ({baseline.ppl}) on {protocol.eval}: its "
                           "outputs overflow, so there is nothing to compress")
    windows = None
    if needs_calibration:
        windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen, seed=protocol.seed,
                              target=protocol.calib_target, select=protocol.calib_select, recipe=stages,
                              progress=progress)
    # several processes keep no checkpoints: every rank would write the same folder
    checkpoints = _checkpoint_dir(out) if out is not None and world_size() == 1 else None
    result = compress(lm, stages, windows, progress=progress, checkpoint_dir=checkpoints, held_out=protocol.eval,
                      batch_size=execution.batch_size)
    _report(result, source, baseline, protocol, execution, progress, rounded=storage_format if out is not None else None)
    return result


def _report(result: CompressionResult, source: str, baseline, protocol: Protocol, execution: Execution,
            progress: bool, rounded: str | None) -> None:
    """Measure the compressed causal LM as the baseline was measured and attach its report;
    ``rounded``: the storage format whose values are measured (``None``: the model as it is)."""
    check_finite(result.model, "the compressed model")
    if rounded is not None:  # measure exactly the values the folder will hold (fp16 beside quantized layers)
        round_for_storage(result.model, format=rounded)
    after = evaluate(LoadedModel(result.model, result.tokenizer, source), data=protocol.eval, seqlen=protocol.seqlen,
                     windows=protocol.eval_windows, progress=progress, batch_size=execution.batch_size)
    result.report = Report(
        kind="causal_lm",
        model=source,
        recipe=recipe_data(result.recipe),  # resolved: per-block and per-layer choices spelled out
        protocol={**baseline.perplexity.protocol(), "calibration": result.calibration, "settings": asdict(protocol),
                  "execution": execution.describe()},
        baseline=Measurement(ppl=baseline.ppl, **baseline.size.as_dict()),
        compressed=Measurement(ppl=after.ppl, **after.size.as_dict()),
        compress_seconds=result.seconds,
        peak_rss_bytes=result.peak_rss_bytes,
        layers=[record.as_dict() for record in result.layers],
        recovery=result.recovery,
    )


def _check_texts(stages: list[MethodConfig], protocol: Protocol):
    """Read every text the job uses (a missing one fails here, before any work) and refuse
    calibration or recovery text that overlaps the evaluation text; returns the latter."""
    held_out = resolve_text(protocol.eval)
    if any(stage.needs_calibration for stage in stages):
        check_disjoint([resolve_text(protocol.calib, default_split="valid").text], held_out, "calibration")
        if protocol.calib_target is not None:
            resolve_text(protocol.calib_target, default_split="valid")
    for stage in stages:  # a recover stage's recovery text (and DSIR target)
        for text in stage.texts():
            check_disjoint([resolve_text(text, default_split="valid").text], held_out, f"{stage.method} stage's")
    return held_out


def _graph_run(task: ModelTask, stages: list[MethodConfig], threads: int | None) -> CompressionResult:
    """Score, prune (``channels`` stages through the dependency graph), score and time a zoo model."""
    stages = [cfg.for_task(task) for cfg in stages]  # the report states the settings in effect
    dense = copy.deepcopy(task.model)
    baseline = _task_measurement(task, dense)
    plan, groups = SlimPlan(), []
    start = time.perf_counter()
    for cfg in stages:
        pruned = cfg.handler().act_graph(task, cfg)
        plan.cuts.extend(pruned.plan.cuts)
        groups = pruned.groups
    seconds = time.perf_counter() - start
    task.model.eval()
    compressed = _task_measurement(task, task.model)
    ms = interleaved_ms({"dense": dense, "pruned": task.model}, task.forward, LATENCY_RUNS, LATENCY_WARMUP, threads)
    baseline.latency_ms, compressed.latency_ms = ms["dense"], ms["pruned"]
    used = torch.get_num_threads() if threads is None else threads
    report = Report(
        kind="channels",
        model=task.name,
        recipe=recipe_data(stages),
        protocol={**task.protocol, "latency_runs": f"median of {LATENCY_RUNS} after {LATENCY_WARMUP} warm-up, "
                  f"dense and pruned alternating, fp32, CPU threads: {used}"},
        baseline=baseline,
        compressed=compressed,
        compress_seconds=seconds,
        peak_rss_bytes=peak_rss_bytes(),
        layers=groups,
    )
    return CompressionResult(model=task.model, tokenizer=task.tokenizer, recipe=stages, layers=[], calibration=None,
                             seconds=seconds, peak_rss_bytes=report.peak_rss_bytes, source=task.name, report=report,
                             plan=plan)


def _task_measurement(task: ModelTask, model) -> Measurement:
    return Measurement(params=count_params(model), macs=count_macs(model, task.example_inputs), scores=task.score(model))


def _saved_config(source: str):
    """``(config, saved modules)`` of a local model folder, read without its weights; ``None``
    for other sources (aliases, GGUF files, hub ids).

    Raises:
        NetslimError: for a config that is corrupt, unsupported or asks to run its own code.
    """
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        return None
    config = read_model_config(folder)
    modules = None
    if (folder / NETSLIM_MARKER).is_file():
        modules = read_marker(folder).get("modules")
    return config, modules if isinstance(modules, dict) else None


def _preflight(stages, protocol: Protocol, config, adapter: ModelAdapter, modules: dict | None,
               storage_format: str) -> None:
    check_seqlen(config, protocol.seqlen)
    shape = model_shape(adapter, modules)
    check_recipe(stages, shape)
    if storage_format == "dense":  # plain transformers holds plain and dequantized layers only
        odd = ({layer.kind for layer in shape.layers.values()} | shape.module_kinds) - {FLOAT, "quantized"}
        uneven = [s.method for s in stages if s.method == "width" and (s.compensates or s.allocation == "global")]
        if odd or uneven:
            what = ", ".join(sorted(odd)) or "per-block widths or compensation biases"
            raise ConfigError(f"--format dense (plain transformers) cannot hold what this recipe makes ({what}); "
                              "use --format auto or packed")


def _checkpoint_dir(out: str | os.PathLike | None) -> Path | None:
    """Per-output checkpoint folder in the cache, so an interrupted job resumes when rerun."""
    if out is None:
        return None
    key = hashlib.sha256(str(Path(out).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "checkpoints" / key
