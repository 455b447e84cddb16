"""The job behind ``netslim compress`` for vision and encoder models (``channels`` stages).

Load the zoo model with its evaluation (:mod:`netslim.models.tasks`), score the dense model,
prune its channels, score again, time both side by side, and write the smaller dense model
with its plan, recipe and report. Folder layout::

    slim_plan.json      the cuts, replayable on a fresh model (netslim.graph.SlimPlan)
    model.safetensors   the pruned weights
    netslim.json        format "slim_plan", the source model and the recipe
    recipe.yaml, report.json, report.md (and the tokenizer of a text model)

``netslim.load(folder)`` rebuilds the pruned model.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass

import torch
from safetensors.torch import save_model
from torch import nn

from netslim import __version__
from netslim.errors import ConfigError
from netslim.eval.flops import count_macs
from netslim.eval.latency import interleaved_ms
from netslim.eval.report import render_markdown
from netslim.eval.size import count_params, folder_weight_bytes
from netslim.export.atomic import atomic_folder, check_output
from netslim.export.recipe_file import dump_recipe, recipe_data
from netslim.graph.plan import PLAN_FILE, WEIGHTS_FILE, SlimPlan
from netslim.methods.base import MethodConfig, Scope
from netslim.models.folder import NETSLIM_MARKER
from netslim.models.tasks import ModelTask, load_task
from netslim.recipe import RecipeLike, parse_recipe

SLIM_FORMAT = "slim_plan"
LATENCY_RUNS, LATENCY_WARMUP = 10, 3


@dataclass
class ChannelJobResult:
    """The pruned model, its cuts and the report (as written to report.json)."""

    model: nn.Module
    plan: SlimPlan
    report: dict


def check_graph_recipe(source: str, stages: list[MethodConfig]) -> None:
    """Refuse stages that need a causal LM on a vision or encoder model."""
    for cfg in stages:
        if cfg.scope is not Scope.GRAPH:
            raise ConfigError(f"method '{cfg.method}' needs a causal LM; {source} takes method channels "
                              "(e.g. --method channels --ratio 0.3 --set measure=macs)")


def channel_job(
    source: str,
    recipe: RecipeLike,
    out: str | os.PathLike | None,
    overwrite: bool = False,
    threads: int | None = None,
) -> ChannelJobResult:
    """Run the whole job on zoo model ``source``; ``out=None`` skips writing.

    Args:
        threads: CPU threads for the latency measurement (``None`` keeps torch's setting).

    Raises:
        ConfigError: for a stage that is not ``channels``, or unreachable targets.
        OutputExistsError: if ``out`` exists and ``overwrite`` is false.
    """
    stages = parse_recipe(recipe)
    check_graph_recipe(source, stages)
    if out is not None:
        check_output(out, overwrite)
    task = load_task(source)
    stages = [cfg.for_task(task) for cfg in stages]  # the report states the settings in effect
    dense = copy.deepcopy(task.model)
    baseline = _measure(task, dense)
    plan, groups = SlimPlan(), []
    start = time.perf_counter()
    for cfg in stages:
        result = cfg.handler(task, cfg)
        plan.cuts.extend(result.plan.cuts)
        groups = result.groups
    seconds = time.perf_counter() - start
    task.model.eval()
    compressed = _measure(task, task.model)
    ms = interleaved_ms({"dense": dense, "pruned": task.model}, task.forward, LATENCY_RUNS, LATENCY_WARMUP, threads)
    baseline["latency_ms"], compressed["latency_ms"] = ms["dense"], ms["pruned"]
    from netslim.api import peak_rss_bytes  # noqa: PLC0415  (api imports the LLM engine)

    report = {
        "kind": "channels",
        "model": task.name,
        "recipe": recipe_data(stages),
        "protocol": {**task.protocol, "latency_runs": f"median of {LATENCY_RUNS} after {LATENCY_WARMUP} warm-up, "
                     "dense and pruned alternating, fp32, CPU threads: "
                     f"{torch.get_num_threads() if threads is None else threads}"},
        "baseline": baseline,
        "compressed": compressed,
        "params_removed": 1 - compressed["params"] / baseline["params"],
        "macs_removed": 1 - compressed["macs"] / baseline["macs"],
        "speedup": ms["dense"] / ms["pruned"],
        "compress_seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "groups": groups,
    }
    if out is not None:
        _write(task, plan, stages, report, out, overwrite)
    return ChannelJobResult(task.model, plan, report)


def _measure(task: ModelTask, model: nn.Module) -> dict:
    return {"params": count_params(model), "macs": count_macs(model, task.example_inputs), "scores": task.score(model)}


def _write(task: ModelTask, plan: SlimPlan, stages, report: dict, out, overwrite: bool) -> None:
    with atomic_folder(out, overwrite) as tmp:
        (tmp / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
        save_model(task.model, str(tmp / WEIGHTS_FILE))
        if task.tokenizer is not None:
            task.tokenizer.save_pretrained(tmp)
        (tmp / "recipe.yaml").write_text(dump_recipe(stages), encoding="utf-8")
        marker = {"netslim_version": __version__, "format": SLIM_FORMAT, "source": task.name,
                  "recipe": recipe_data(stages)}
        (tmp / NETSLIM_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        report["compressed"]["size_bytes"] = folder_weight_bytes(tmp)
        (tmp / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
