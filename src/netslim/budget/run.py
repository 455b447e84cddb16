"""``netslim search``: the best model for a size or perplexity budget, and its Pareto front
(a speed budget is searched by :mod:`netslim.budget.speed`).

The steps (each one's results are kept in the cache, so an interrupted search resumes where
it stopped, and a second search of the same model and protocol reuses the first's work):

1. one statistics pass and the per-layer proxies (:mod:`netslim.budget.proxies`), with exact
   byte costs (:mod:`netslim.budget.space`);
2. the uniform grids of the space measured end to end as single-method baselines, on
   held-out windows of the calibration text (never the evaluation text);
3. per budget, allocations from the solver (:mod:`netslim.budget.allocate`), each measured
   end to end: for ``size``, the error-minimal allocations under a few weightings of the
   proxy; for ``ppl``, the byte-minimal allocation for a proxy budget, narrowed after every
   measurement between the measured points that bracket the perplexity goal;
4. the chosen allocation compressed for real (sequential GPTQ through ``compress_job``),
   evaluated on the evaluation text, and written with ``pareto.json``, ``pareto.png`` and
   ``report.md``.

Output folder::

    model/          the chosen model (a netslim folder: netslim.load, netslim eval, export)
    pareto.json     every measured point (bytes, loss, perplexity ratio, recipe) and the front
    pareto.png      bytes against perplexity ratio: the front, the baselines, the choice
    report.md       the budget, the choice and the front
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from netslim.api import bos_id, calibration, peak_rss_bytes
from netslim.budget.allocate import Allocation, Option, allocate, front
from netslim.budget.budgets import Budget, parse_budget
from netslim.budget.common import (
    Setup, State, choice_key, final_figures, final_model, float_count, late, note, public, summary, work_dir,
    write_outputs,
)
from netslim.budget.outputs import render_report
from netslim.budget.proxies import (
    VERSION, Assembler, Proxies, kind_of, measure_proxies, model_nll, reference_labels,
)
from netslim.budget.space import KEEP, Space, allocation_recipe, decoder_projections, fixed_bytes, option_bytes
from netslim.budget.speed import check_structure_supported, search_speed
from netslim.data import resolve_text
from netslim.data.select import check_disjoint
from netslim.data.windows import TokenWindows, evaluation_windows, tokenize
from netslim.engine.execution import Execution
from netslim.errors import ConfigError, NetslimError
from netslim.export.atomic import check_output, check_writable
from netslim.job import Protocol
from netslim.methods.gptq import GPTQConfig
from netslim.methods.preflight import check_recipe, check_seqlen, model_shape
from netslim.models.adapter import ModelAdapter
from netslim.models.loading import cache_dir, load_model

VERIFY_WINDOWS = 16  # held-out windows of the calibration text every candidate is measured on
PROBE_WINDOWS = 4  # of those, the ones the per-block sensitivities are measured on
WEIGHTINGS = (1.0, 0.5, 0.0)  # size budget: candidates with the block sensitivities to these powers
MAX_STEPS = 6  # ppl budget: measured candidates at most
RUNTIMES = ("torch",)


@dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        out: The output folder (``None`` when not written).
        chosen: The chosen point of ``pareto["points"]``.
        pareto: The content of ``pareto.json``.
    """

    out: Path | None
    chosen: dict
    pareto: dict


def search(
    model: str,
    budget: str,
    out: str | Path | None,
    protocol: Protocol = Protocol(),
    space: Space = Space(),
    max_minutes: float | None = None,
    runtime: str = "torch",
    overwrite: bool = False,
    progress: bool = True,
    execution: Execution = Execution(),
) -> SearchResult:
    """Find the best model for ``budget`` (``size=60MB``, ``ppl=1.25x`` or ``speedup=1.5x``)
    and write it to ``out``.

    ``size``: the smallest measured loss among allocations whose stored weights (every tensor
    of the folder: embeddings, norms, head and projections) fit the size; predicted bytes are
    bytes on disk. ``ppl``: the smallest stored size whose perplexity on held-out windows of
    the calibration text is at most the ratio times the dense model's. ``speedup``: the
    smallest loss among structural choices (:mod:`netslim.budget.speed`) whose measured
    prefill is at least the ratio faster than the dense model's on this machine; ``space``
    does not apply. ``max_minutes`` stops the refinement (not the final compression) once
    spent. ``execution``: the device, dtype and batch the statistics, every measurement and
    the final compression run with (the search holds the whole model: no offload).

    Raises:
        NetslimError: one line saying what to change, before any expensive work.
    """
    started = time.monotonic()
    target = parse_budget(budget)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime '{runtime}': the search measures PyTorch ('torch') for now; export the "
                          "found model with netslim export --to gguf to run it in llama.cpp")
    if protocol.calib_select == "paser":
        raise ConfigError("--calib-select paser drafts a fixed recipe; a search has none: use random or dsir")
    if max_minutes is not None and max_minutes <= 0:
        raise ConfigError(f"max_minutes={max_minutes}: give a positive number of minutes")
    if execution.offload:
        raise ConfigError("a search measures its candidates on the whole model; leave out --offload")
    execution.torch_device()  # a device this machine lacks fails here, before any work
    inputs = [i for i in (model, protocol.calib, protocol.eval, protocol.calib_target) if i]
    if out is not None:
        check_output(out, overwrite, inputs=inputs)
    check_writable(cache_dir(), "the netslim cache ($NETSLIM_CACHE)")
    held_out = resolve_text(protocol.eval)
    calib_text = resolve_text(protocol.calib, default_split="valid")
    check_disjoint([calib_text.text], held_out, "calibration")

    lm = load_model(model, execution.torch_dtype)
    execution.place(lm.model)
    if lm.tokenizer is None:
        raise ConfigError(f"model '{model}' has no tokenizer; add the tokenizer files to the folder")
    adapter = ModelAdapter.from_model(lm.model)
    check_seqlen(lm.model.config, protocol.seqlen)
    setup = Setup(model, lm, adapter, protocol, execution, inputs, started,
                  None if max_minutes is None else started + 60 * max_minutes, progress,
                  verify_source=f"{calib_text.name}: {VERIFY_WINDOWS} seeded non-overlapping windows "
                                f"(seed {protocol.seed + 1})")
    if target.kind == "speedup":
        check_structure_supported(adapter)
        setup.windows, setup.verify = _windows(lm, protocol, calib_text)
        return SearchResult(*search_speed(setup, target, out, overwrite))
    check_recipe([GPTQConfig(act_order=True)], model_shape(adapter))
    projections = decoder_projections(adapter)
    fixed = fixed_bytes(lm.model, projections)
    sizes = {name: {label: option_bytes(module, label, space) for label in space.labels()}
             for name, module in projections.items()}
    _check_size_budget(target, fixed, sizes)

    windows, verify = _windows(lm, protocol, calib_text)
    settings = {"space": space.as_dict(), "seqlen": protocol.seqlen, "seed": protocol.seed, "verify": VERIFY_WINDOWS,
                "probe": PROBE_WINDOWS, "calib": protocol.calib, "proxies": VERSION}
    work = work_dir(adapter, settings, windows.ids, execution)
    state = State.load(work)
    assembler = Assembler(adapter, space)
    proxies = _cached_proxies(state, assembler, windows, verify[:PROBE_WINDOWS], progress, execution.batch_size)
    dense_nll = state.dense(lambda: model_nll(lm.model, verify, progress))

    def measure(choice: dict[str, str], kind: str, label: str) -> dict:
        point = state.point(choice, lambda: _measured(assembler, choice, verify, progress))
        total = fixed + sum(sizes[n][o] for n, o in choice.items())
        proxy = sum(proxies.loss(n, o) for n, o in choice.items())
        entry = {"label": label, "kind": kind, "bytes": total, "proxy_loss": proxy, "nll": point["nll"],
                 "seconds": point.get("seconds"),
                 "loss_rise": point["nll"] - dense_nll, "ppl_ratio": math.exp(point["nll"] - dense_nll),
                 "choice": summary(choice), "recipe": allocation_recipe(choice, space)}
        note(progress, f"search: {label}: {total / 1e6:.2f} MB, perplexity x{entry['ppl_ratio']:.4f} "
                       f"(proxy x{math.exp(proxy):.4f})")
        return {**entry, "_choice": choice}

    points = [measure({n: b for n in projections}, "baseline", f"gptq {b} (uniform)") for b in _baselines(space)]
    factors = grid_factors(points, proxies, space)
    if target.kind == "size":
        points += _size_candidates(target, fixed, sizes, proxies, factors, measure, setup.deadline)
    else:
        points += _ppl_candidates(target, sizes, proxies, factors, measure, points, setup.deadline)
    chosen = _choose(target, points)
    predicted = _front(fixed, sizes, _loss(proxies, factors), points)

    model_dir, report = final_model(setup, state, chosen)
    on_disk = int(report["storage"]["tensor_bytes"])
    final = {"bytes_predicted": chosen["bytes"], "bytes_on_disk": on_disk, "bytes_match": on_disk == chosen["bytes"],
             **final_figures(report)}
    pareto = {
        "budget": {"kind": target.kind, "value": target.value, "text": target.text},
        "model": model,
        "runtime": runtime,
        "execution": execution.describe(),
        "space": space.as_dict(),
        "protocol": {**asdict(protocol), "verify_windows": VERIFY_WINDOWS, "probe_windows": PROBE_WINDOWS,
                     "verify_source": setup.verify_source},
        "dense": {"bytes": fixed + sum(2 * float_count(m) for m in projections.values()), "nll": dense_nll},
        "fixed_bytes": fixed,
        "points": [public(p) for p in points],
        "chosen": public(chosen),
        "front_predicted": predicted,
        "final": final,
        "search_seconds": time.monotonic() - started,
        # what everything this result rests on cost to compute, in this run or an earlier one it reused
        "work_seconds": state.seconds(["proxies", "dense_nll", f"model {model_dir.name}"])
                        + sum(p.get("seconds") or 0.0 for p in points),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    write_outputs(out, overwrite, inputs, model_dir, pareto, render_report(pareto))
    if not final["bytes_match"]:
        raise NetslimError(f"the stored size ({on_disk} B) differs from the predicted one ({chosen['bytes']} B); "
                           "please report this bug")
    return SearchResult(None if out is None else Path(out), public(chosen), pareto)


def _windows(lm, protocol: Protocol, calib_text) -> tuple[TokenWindows, torch.Tensor]:
    """The calibration windows, and the held-out windows of the calibration text every
    candidate is measured on (seeded, never the evaluation text)."""
    windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen,
                          seed=protocol.seed, target=protocol.calib_target, select=protocol.calib_select)
    pool = evaluation_windows(tokenize(lm.tokenizer, calib_text.text), protocol.seqlen, None,
                              bos_id(lm.model, lm.tokenizer), calib_text.name).ids
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(protocol.seed + 1))
    return windows, pool[order[:VERIFY_WINDOWS]]


def _cached_proxies(state: State, assembler: Assembler, windows, probe: torch.Tensor, progress: bool,
                    batch_size: int = 1) -> Proxies:
    """The quantization proxies and Hessians, measured once per cache folder."""
    file = state.folder / "hessians.pt"
    if "proxies" in state.data and file.is_file():
        shared = torch.load(file, weights_only=True)
        assembler.hessians.update({name: shared[key] for name, key in state.data["hessian_of"].items()})
        return Proxies.from_dict(state.data["proxies"])
    start = time.monotonic()
    proxies = measure_proxies(assembler, windows, probe, progress, batch_size)
    state.data.setdefault("seconds", {})["proxies"] = time.monotonic() - start
    unique: dict[int, str] = {}
    for name, tensor in assembler.hessians.items():
        unique.setdefault(id(tensor), name)
    torch.save({name: assembler.hessians[name] for name in unique.values()}, state.folder / "hessians.pt.tmp")
    (state.folder / "hessians.pt.tmp").replace(file)
    state.data["hessian_of"] = {name: unique[id(t)] for name, t in assembler.hessians.items()}
    state.data["proxies"] = proxies.as_dict()
    state.save()
    return proxies


# --- candidates ---------------------------------------------------------------------------

def grid_factors(points: list[dict], proxies: Proxies, space: Space) -> dict[str, float]:
    """Per option label, measured over predicted rise in loss of its uniform baseline (errors
    add up more than linearly: 3-bit everywhere hurts more than the blocks one at a time
    said); a label without a baseline takes the factor of the measured one with the nearest
    bits and group, at its own bit width only (1 if none)."""
    measured = {}
    for p in points:
        [label] = p["choice"] if len(p["choice"]) == 1 else [None]
        raw = sum(proxies.loss(n, o) for n, o in p["_choice"].items())
        if label is not None and label != KEEP and raw > 0:
            measured[label] = max(p["loss_rise"], 0.0) / raw
    factors = {}
    for grid in space.grids:
        same = [space.grid(label) for label in measured if space.grid(label).bits == grid.bits]
        nearest = min(same, key=lambda g: abs(g.group_size - grid.group_size), default=None)
        factors[grid.label] = measured[nearest.label] if nearest is not None else 1.0
    return factors


def _loss(proxies: Proxies, factors: dict[str, float], weighting: float = 1.0):
    """The calibrated proxy of an option on a projection; ``weighting`` < 1 flattens the block
    and kind sensitivities toward plain layer-output error (candidates that hedge against them)."""
    def loss(name: str, label: str) -> float:
        if label == KEEP:
            return 0.0
        scale = proxies.sensitivity.get(proxies.blocks[name], 1.0) * proxies.kinds.get(kind_of(name), 1.0)
        return scale ** weighting * proxies.errors[name][label] * factors.get(label, 1.0)
    return loss


def _options(sizes: dict[str, dict[str, int]], loss) -> dict[str, list[Option]]:
    return {name: [Option(label, size, loss(name, label)) for label, size in options.items()]
            for name, options in sizes.items()}


def _estimate(loss, choice: dict[str, str]) -> float:
    return sum(loss(n, o) for n, o in choice.items())


def _size_candidates(target: Budget, fixed: int, sizes, proxies: Proxies, factors, measure, deadline) -> list[dict]:
    points, seen = [], set()
    for weighting in WEIGHTINGS:
        if late(deadline) and points:
            break
        options = _options(sizes, _loss(proxies, factors, weighting))
        allocation = allocate(options, minimize="error", max_bytes=int(target.value) - fixed)
        if choice_key(allocation.choice) in seen:
            continue
        seen.add(choice_key(allocation.choice))
        points.append(measure(allocation.choice, "candidate", f"allocation, sensitivity^{weighting:g}"))
    return points


def _ppl_candidates(target: Budget, sizes, proxies: Proxies, factors, measure, measured: list[dict],
                    deadline) -> list[dict]:
    goal = math.log(target.value)
    loss = _loss(proxies, factors)
    options = _options(sizes, loss)
    points: list[dict] = []
    seen = {choice_key(p["_choice"]) for p in measured}
    for step in range(MAX_STEPS):
        if late(deadline) and points:
            break
        try:
            allocation = allocate(options, minimize="bytes", max_error=_error_budget(measured + points, goal, loss))
        except ConfigError:
            break
        if choice_key(allocation.choice) in seen:
            break
        seen.add(choice_key(allocation.choice))
        points.append(measure(allocation.choice, "candidate", f"allocation {step + 1}"))
    return points


def _error_budget(points: list[dict], goal: float, loss) -> float:
    """The proxy budget of the next ppl candidate: the byte-minimal allocation under it is
    measured next.

    Once measured points bracket the goal (one within it, one over it), the next budget lies
    between their proxies, where the line through them meets the goal, kept within the middle
    half of the bracket (safeguarded false position: the bracket shrinks by at least a quarter
    each step, however curved the front is). Before that, the proxy is scaled by measured over
    predicted loss at the points nearest the goal (a secant through the origin).
    """
    usable = [(p["loss_rise"], _estimate(loss, p["_choice"])) for p in points]
    usable = [(rise, est) for rise, est in usable if est > 0]
    within = [(rise, est) for rise, est in usable if rise <= goal]
    over = [(rise, est) for rise, est in usable if rise > goal]
    if within and over:
        low = max(within, key=lambda re: re[1])  # the largest proxy known to meet the goal
        high = min((re for re in over if re[1] > low[1]), key=lambda re: re[1], default=None)
        if high is not None:
            share = (goal - low[0]) / (high[0] - low[0]) if high[0] > low[0] else 0.5
            return low[1] + min(max(share, 0.25), 0.75) * (high[1] - low[1])
    return goal / _loss_scale(usable, goal)


def _loss_scale(usable: list[tuple[float, float]], goal: float) -> float:
    """Measured rise in loss per unit of calibrated proxy, from the (measured rise, proxy)
    pairs nearest the goal (the two that bracket it, else the nearest)."""
    if not usable:
        return 1.0
    below = [pair for pair in usable if pair[0] <= goal]
    above = [pair for pair in usable if pair[0] > goal]
    near = []
    if below:
        near.append(max(below, key=lambda pair: pair[0]))
    if above:
        near.append(min(above, key=lambda pair: pair[0]))
    return max(sum(max(rise, 0.0) for rise, _ in near) / sum(est for _, est in near), 1e-6)


def _choose(target: Budget, points: list[dict]) -> dict:
    if target.kind == "size":
        fitting = [p for p in points if p["bytes"] <= target.value]
        if not fitting:
            raise NetslimError(f"no measured model fits {target.text}")  # the solver's candidates always fit
        return min(fitting, key=lambda p: (p["nll"], p["bytes"]))
    fitting = [p for p in points if p["ppl_ratio"] <= target.value]
    if not fitting:
        best = min(points, key=lambda p: p["ppl_ratio"])
        raise NetslimError(f"no measured model met {target.text} (the best was x{best['ppl_ratio']:.3f} at "
                           f"{best['bytes'] / 1e6:.1f} MB); loosen the budget or add 8-bit and keep options")
    return min(fitting, key=lambda p: (p["bytes"], p["nll"]))


def _front(fixed: int, sizes, loss, points: list[dict]) -> list[dict]:
    """The solver's predicted front (bytes against calibrated proxy), mapped to perplexity
    ratios through a least-squares fit (through the origin) of measured to predicted loss."""
    pairs = [(p["loss_rise"], _estimate(loss, p["_choice"])) for p in points]
    pairs = [(m, e) for m, e in pairs if e > 0]
    scale = max(sum(m * e for m, e in pairs) / sum(e * e for _, e in pairs), 1e-6) if pairs else 1.0
    allocations: list[Allocation] = front(_options(sizes, loss), points=12)
    return [{"bytes": fixed + a.bytes, "proxy_loss": a.error, "ppl_ratio_predicted": math.exp(scale * a.error)}
            for a in allocations]


# --- helpers ------------------------------------------------------------------------------

def _baselines(space: Space) -> list[str]:
    """The uniform grids measured as single-method baselines: those GPTQ already ran on for the
    proxies, and 4 bits at the next finer group size."""
    references, _ = reference_labels(space)
    reference_group = space.grid(next(iter(references.values()))).group_size
    finer = [g for g in space.groups if g < reference_group]
    extra = [f"b4 g{max(finer)}"] if finer and 4 in space.bits else []
    return [*references.values(), *extra]


def _check_size_budget(target: Budget, fixed: int, sizes: dict[str, dict[str, int]]) -> None:
    if target.kind != "size":
        return
    smallest = fixed + sum(min(o.values()) for o in sizes.values())
    largest = fixed + sum(max(o.values()) for o in sizes.values())
    if target.value < smallest:
        raise ConfigError(f"budget {target.text}: the smallest model this space allows takes {smallest / 1e6:.2f} MB "
                          f"({smallest} B); raise the size or add 2-bit options")
    if target.value >= largest:
        raise ConfigError(f"budget {target.text}: the model already fits ({largest / 1e6:.2f} MB with every "
                          "projection in 16 bits); nothing to search")


def _measured(assembler: Assembler, choice: dict[str, str], verify: torch.Tensor, progress: bool) -> dict:
    with assembler.applied(choice, progress):
        return {"nll": model_nll(assembler.adapter.model, verify, progress)}


