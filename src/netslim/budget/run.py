"""``netslim search``: the best model for a size or perplexity budget, and its Pareto front.

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

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from netslim.api import bos_id, calibration, peak_rss_bytes
from netslim.budget.allocate import Allocation, Option, allocate, front
from netslim.budget.budgets import Budget, parse_budget
from netslim.budget.outputs import render_pareto, render_report
from netslim.budget.proxies import (
    VERSION, Assembler, Proxies, kind_of, measure_kinds, measure_proxies, model_nll, reference_labels,
)
from netslim.budget.space import KEEP, Space, allocation_recipe, decoder_projections, fixed_bytes, option_bytes
from netslim.data import resolve_text
from netslim.data.select import check_disjoint
from netslim.data.windows import evaluation_windows, tokenize
from netslim.engine.checkpoint import job_fingerprint
from netslim.engine.execution import Execution
from netslim.errors import ConfigError, NetslimError
from netslim.export.atomic import atomic_folder, check_output, check_writable
from netslim.job import Protocol, compress_job
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
    """Find the best model for ``budget`` (``size=60MB`` or ``ppl=1.25x``) and write it to ``out``.

    ``size``: the smallest measured loss among allocations whose stored weights (every tensor
    of the folder: embeddings, norms, head and projections) fit the size; predicted bytes are
    bytes on disk. ``ppl``: the smallest stored size whose perplexity on held-out windows of
    the calibration text is at most the ratio times the dense model's. ``max_minutes`` stops
    the refinement (not the final compression) once spent. ``execution``: the device, dtype and
    batch the statistics, every measurement and the final compression run with (the search
    holds the whole model: no offload).

    Raises:
        NetslimError: one line saying what to change, before any expensive work.
    """
    started = time.monotonic()
    target = parse_budget(budget)
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime '{runtime}': the search measures PyTorch ('torch') for now; export the "
                          "found model with netslim export --to gguf to run it in llama.cpp")
    if target.kind == "speedup":
        raise ConfigError(f"budget '{budget}': speed budgets are not searched yet; use size=... or ppl=...")
    if protocol.calib_select == "paser":
        raise ConfigError("--calib-select paser drafts a fixed recipe; a search has none: use random or dsir")
    if max_minutes is not None and max_minutes <= 0:
        raise ConfigError(f"max_minutes={max_minutes}: give a positive number of minutes")
    if execution.offload:
        raise ConfigError("a search measures its candidates on the whole model; leave out --offload")
    execution.torch_device()  # a device this machine lacks fails here, before any work
    inputs = [model, protocol.calib, protocol.eval, protocol.calib_target]
    if out is not None:
        check_output(out, overwrite, inputs=[i for i in inputs if i])
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
    check_recipe([GPTQConfig(act_order=True)], model_shape(adapter))
    projections = decoder_projections(adapter)
    fixed = fixed_bytes(lm.model, projections)
    sizes = {name: {label: option_bytes(module, label, space) for label in space.labels()}
             for name, module in projections.items()}
    _check_size_budget(target, fixed, sizes)

    windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen,
                          seed=protocol.seed, target=protocol.calib_target, select=protocol.calib_select)
    pool = evaluation_windows(tokenize(lm.tokenizer, calib_text.text), protocol.seqlen, None,
                              bos_id(lm.model, lm.tokenizer), calib_text.name).ids
    order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(protocol.seed + 1))
    verify = pool[order[:VERIFY_WINDOWS]]
    work = _work_dir(adapter, space, protocol, windows.ids, execution)
    state = _State.load(work)
    assembler = Assembler(adapter, space)
    proxies = state.proxies(assembler, windows, verify[:PROBE_WINDOWS], progress, execution.batch_size)
    dense_nll = state.dense(lambda: model_nll(lm.model, verify, progress))

    def measure(choice: dict[str, str], kind: str, label: str) -> dict:
        point = state.point(choice, lambda: _measured(assembler, choice, verify, progress))
        total = fixed + sum(sizes[n][o] for n, o in choice.items())
        proxy = sum(proxies.loss(n, o) for n, o in choice.items())
        entry = {"label": label, "kind": kind, "bytes": total, "proxy_loss": proxy, "nll": point["nll"],
                 "seconds": point.get("seconds"),
                 "loss_rise": point["nll"] - dense_nll, "ppl_ratio": math.exp(point["nll"] - dense_nll),
                 "choice": _summary(choice), "recipe": allocation_recipe(choice, space)}
        _note(progress, f"search: {label}: {total / 1e6:.2f} MB, perplexity x{entry['ppl_ratio']:.4f} "
                        f"(proxy x{math.exp(proxy):.4f})")
        return {**entry, "_choice": choice}

    points = [measure({n: b for n in projections}, "baseline", f"gptq {b} (uniform)") for b in _baselines(space)]
    deadline = None if max_minutes is None else started + 60 * max_minutes
    factors = grid_factors(points, proxies, space)
    if target.kind == "size":
        points += _size_candidates(target, fixed, sizes, proxies, factors, measure, deadline)
    else:
        points += _ppl_candidates(target, sizes, proxies, factors, measure, points, deadline)
    chosen = _choose(target, points)
    predicted = _front(fixed, sizes, _loss(proxies, factors), points)

    recipe = chosen["recipe"]
    model_dir = work / "models" / _key(chosen["_choice"])
    final_start = time.monotonic()
    if not (model_dir / "report.json").is_file():
        compress_job(model, recipe, model_dir, protocol, overwrite=False, progress=progress,
                     execution=replace(execution, offload=False))
        state.data.setdefault("seconds", {})[f"model {model_dir.name}"] = time.monotonic() - final_start
        state.save()
    report = json.loads((model_dir / "report.json").read_text(encoding="utf-8"))
    on_disk = int(report["storage"]["tensor_bytes"])
    final = {"bytes_predicted": chosen["bytes"], "bytes_on_disk": on_disk, "bytes_match": on_disk == chosen["bytes"],
             "ppl": report["compressed"]["ppl"], "dense_ppl": report["baseline"]["ppl"],
             "ppl_ratio": report["compressed"]["ppl"] / report["baseline"]["ppl"],
             "compress_seconds": report["compress_seconds"]}
    pareto = {
        "budget": {"kind": target.kind, "value": target.value, "text": target.text},
        "model": model,
        "runtime": runtime,
        "execution": execution.describe(),
        "space": space.as_dict(),
        "protocol": {**asdict(protocol), "verify_windows": VERIFY_WINDOWS, "probe_windows": PROBE_WINDOWS,
                     "verify_source": f"{calib_text.name}: {VERIFY_WINDOWS} seeded non-overlapping windows "
                                      f"(seed {protocol.seed + 1})"},
        "dense": {"bytes": fixed + sum(2 * _float_count(m) for m in projections.values()), "nll": dense_nll},
        "fixed_bytes": fixed,
        "points": [_public(p) for p in points],
        "chosen": _public(chosen),
        "front_predicted": predicted,
        "final": final,
        "search_seconds": time.monotonic() - started,
        # what everything this result rests on cost to compute, in this run or an earlier one it reused
        "work_seconds": state.seconds(model_dir.name) + sum(p.get("seconds") or 0.0 for p in points),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if out is not None:
        with atomic_folder(out, overwrite, inputs=[i for i in inputs if i]) as tmp:
            shutil.copytree(model_dir, tmp / "model")
            (tmp / "pareto.json").write_text(json.dumps(pareto, indent=2), encoding="utf-8")
            render_pareto(pareto, tmp / "pareto.png")
            (tmp / "report.md").write_text(render_report(pareto), encoding="utf-8")
        shutil.rmtree(model_dir, ignore_errors=True)
    if not final["bytes_match"]:
        raise NetslimError(f"the stored size ({on_disk} B) differs from the predicted one ({chosen['bytes']} B); "
                           "please report this bug")
    return SearchResult(None if out is None else Path(out), _public(chosen), pareto)


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
        if _late(deadline) and points:
            break
        options = _options(sizes, _loss(proxies, factors, weighting))
        allocation = allocate(options, minimize="error", max_bytes=int(target.value) - fixed)
        if _key(allocation.choice) in seen:
            continue
        seen.add(_key(allocation.choice))
        points.append(measure(allocation.choice, "candidate", f"allocation, sensitivity^{weighting:g}"))
    return points


def _ppl_candidates(target: Budget, sizes, proxies: Proxies, factors, measure, measured: list[dict],
                    deadline) -> list[dict]:
    goal = math.log(target.value)
    loss = _loss(proxies, factors)
    options = _options(sizes, loss)
    points: list[dict] = []
    seen = {_key(p["_choice"]) for p in measured}
    for step in range(MAX_STEPS):
        if _late(deadline) and points:
            break
        try:
            allocation = allocate(options, minimize="bytes", max_error=_error_budget(measured + points, goal, loss))
        except ConfigError:
            break
        if _key(allocation.choice) in seen:
            break
        seen.add(_key(allocation.choice))
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


def _summary(choice: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in choice.values():
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def _public(point: dict) -> dict:
    return {k: v for k, v in point.items() if not k.startswith("_")}


def _key(choice: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(choice.items())).encode()).hexdigest()[:16]


def _float_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def _note(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        tqdm.write(message)


def _work_dir(adapter: ModelAdapter, space: Space, protocol: Protocol, ids: torch.Tensor,
              execution: Execution) -> Path:
    settings = [{"space": space.as_dict(), "seqlen": protocol.seqlen, "seed": protocol.seed,
                 "verify": VERIFY_WINDOWS, "probe": PROBE_WINDOWS, "calib": protocol.calib, "proxies": VERSION}]
    if execution.dtype != "float32":  # float32 searches keep the keys of earlier versions
        settings[0]["dtype"] = execution.dtype
    folder = cache_dir() / "search" / job_fingerprint(adapter, settings, ids)[:20]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class _State:
    """What a search keeps in the cache to resume: the proxies, the Hessians, the measured points."""

    folder: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> _State:
        file = folder / "state.json"
        try:
            data = json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}
        except ValueError:
            data = {}  # a damaged state is recomputed
        return cls(folder, data if isinstance(data, dict) else {})

    def save(self) -> None:
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(self.data), encoding="utf-8")
        tmp.replace(self.folder / "state.json")

    def proxies(self, assembler: Assembler, windows, probe: torch.Tensor, progress: bool,
                batch_size: int = 1) -> Proxies:
        file = self.folder / "hessians.pt"
        if "proxies" in self.data and file.is_file():
            shared = torch.load(file, weights_only=True)
            assembler.hessians.update({name: shared[key] for name, key in self.data["hessian_of"].items()})
            proxies = Proxies.from_dict(self.data["proxies"])
            if not proxies.kinds:  # a state from before the kinds were measured
                start = time.monotonic()
                measure_kinds(assembler, proxies, probe, progress)
                self.data["proxies"] = proxies.as_dict()
                seconds = self.data.setdefault("seconds", {})
                seconds["proxies"] = seconds.get("proxies", 0.0) + time.monotonic() - start
                self.save()
            return proxies
        start = time.monotonic()
        proxies = measure_proxies(assembler, windows, probe, progress, batch_size)
        self.data.setdefault("seconds", {})["proxies"] = time.monotonic() - start
        unique: dict[int, str] = {}
        for name, tensor in assembler.hessians.items():
            unique.setdefault(id(tensor), name)
        torch.save({name: assembler.hessians[name] for name in unique.values()}, self.folder / "hessians.pt.tmp")
        (self.folder / "hessians.pt.tmp").replace(file)
        self.data["hessian_of"] = {name: unique[id(t)] for name, t in assembler.hessians.items()}
        self.data["proxies"] = proxies.as_dict()
        self.save()
        return proxies

    def dense(self, compute) -> float:
        if "dense_nll" not in self.data:
            start = time.monotonic()
            self.data["dense_nll"] = compute()
            self.data.setdefault("seconds", {})["dense"] = time.monotonic() - start
            self.save()
        return self.data["dense_nll"]

    def point(self, choice: dict[str, str], compute) -> dict:
        """A measured point (``nll``, and ``seconds``: what measuring it cost, when it was)."""
        points = self.data.setdefault("points", {})
        key = _key(choice)
        if key not in points:
            start = time.monotonic()
            points[key] = {**compute(), "seconds": time.monotonic() - start}
            self.save()
        return points[key]

    def seconds(self, model: str) -> float:
        """What the proxies, the dense loss and final model ``model`` cost when they were
        computed (in this run or an earlier one)."""
        seconds = self.data.get("seconds", {})
        return sum(seconds.get(k, 0.0) for k in ("proxies", "dense", f"model {model}"))
