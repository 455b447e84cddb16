"""``netslim search --budget speedup=1.5x``: the model with the lowest loss whose prefill is at
least that much faster than the dense model's, measured on this machine in PyTorch.

The steps (each result kept in the cache, so an interrupted search resumes):

1. one sweep of the dense model scores every block's attention units and MLP neurons (FLAP)
   and keeps the statistics every cut is refitted by; every block shape of the space is
   timed (:func:`netslim.budget.structure.latency_table`) and each block is probed for its
   sensitivity and for the cost of removing it;
2. single-method baselines are measured: the same width cut in every block, for each number
   of attention units it removes the one removing fewest neurons that the latency table says
   meets the budget (FLAP's energies do not weigh heads against neurons well enough to pick
   one of them unmeasured), and depth alone (the blocks whose removal costs least);
3. the solver (:mod:`netslim.budget.allocate`) picks one option per block with the smallest
   estimated loss under the latency budget, under three weightings of the block
   sensitivities, and once with every block restricted to the best measured uniform cut or
   the next lighter one; each candidate is cut from a copy of the dense model with every
   block refitted on the dense statistics (no forward over the calibration windows: seconds,
   where compressing it takes a calibration pass), measured on held-out windows of the
   calibration text and timed beside the dense model; a candidate slower than measured to be
   needed tightens the budget by its measured over predicted time for the next one;
4. the fastest-enough candidate with the lowest loss is compressed by ``compress_job`` with
   its recipe (the candidate's shapes, so its speed and bytes; its width stage refits each
   kept block on the states that reach it in the cut model, so the loss differs a little),
   evaluated on the evaluation text, reloaded from its folder and timed beside the dense
   model again.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from netslim.api import compress, peak_rss_bytes
from netslim.budget.allocate import Option, allocate
from netslim.budget.budgets import Budget
from netslim.budget.common import (
    Setup, State, choice_key, final_figures, final_model, late, note, public, summary, work_dir, write_outputs,
)
from netslim.budget.outputs import render_speed_report
from netslim.budget.proxies import model_nll
from netslim.budget.structure import (
    DROP, VERSION, Cut, LatencyTable, Structure, StructureProxies, latency_table, measure_probes, option_loss,
)
from netslim.engine.sweep import iter_block_stats
from netslim.errors import ConfigError, NetslimError
from netslim.eval.latency import compare_latency, paired_speedup
from netslim.export.load import load
from netslim.export.save import save
from netslim.models import surgery
from netslim.models.adapter import ModelAdapter
from netslim.models.loading import NETSLIM_MARKER

PROBE_WINDOWS = 4  # held-out windows of each block probe
WEIGHTINGS = (1.0, 0.5, 0.0)  # candidates with the block sensitivities to these powers
REFINE = 2  # extra candidates, each with the budget tightened by the last one's measured time
AIM = 1.06  # the first candidates aim this much past the speed-up (a timing varies by up to ~5% here)
REPEATS = 9  # timed prefills per model when a candidate is timed beside the dense model


def check_structure_supported(adapter: ModelAdapter) -> None:
    """Refuse, in one line and before any work, a model the structural space cannot cut."""
    if adapter.spec.experts is not None:
        raise ConfigError(f"a speed budget removes attention heads, MLP neurons and blocks; {adapter.spec.name} is "
                          "a mixture of experts, whose routed experts width pruning does not resize: use size= or ppl=")
    surgery.check_width_supported(adapter)
    if adapter.num_blocks < 2:
        raise ConfigError("a speed budget needs a model of at least two decoder blocks")


def search_speed(setup: Setup, target: Budget, out, overwrite: bool) -> tuple[Path | None, dict, dict]:
    """The speed budget's search (module docstring); returns the output folder, the chosen
    point and ``pareto.json``'s content."""
    adapter, model, progress = setup.adapter, setup.lm.model, setup.progress
    protocol, windows, verify = setup.protocol, setup.windows, setup.verify
    settings = {"structure": VERSION, "seqlen": protocol.seqlen, "seed": protocol.seed, "verify": len(verify),
                "probe": PROBE_WINDOWS, "calib": protocol.calib, "threads": torch.get_num_threads(), "repeats": REPEATS}
    state = State.load(work_dir(adapter, settings, windows.ids, setup.execution))
    sweep = lambda needs, **kw: iter_block_stats(adapter, windows, needs, batch_size=setup.execution.batch_size, **kw)  # noqa: E731
    note(progress, "search: scoring every block's heads and neurons (one sweep of the calibration windows)")
    scoring = time.monotonic()
    structure = Structure.measure(adapter, sweep)
    scoring = time.monotonic() - scoring
    window = verify[:1]
    table = LatencyTable.from_dict(state.cached("latency", lambda: latency_table(
        adapter, structure, window, progress=progress).as_dict()))
    proxies = StructureProxies.from_dict(state.cached("structure_proxies", lambda: measure_probes(
        adapter, structure, verify[:PROBE_WINDOWS], progress).as_dict()))
    dense_nll = state.dense(lambda: model_nll(model, verify, progress))
    names = structure.names

    def measure(choice: dict[str, str], kind: str, label: str) -> dict:
        recipe = structure.recipe(choice)
        point = state.point(choice, lambda: _measured(setup, structure, choice, window))
        predicted = table.predict(choice)
        entry = {"label": label, "kind": kind, "bytes": point["bytes"], "nll": point["nll"],
                 "loss_rise": point["nll"] - dense_nll, "ppl_ratio": math.exp(point["nll"] - dense_nll),
                 "proxy_loss": sum(option_loss(structure, proxies)(i, choice[n]) for i, n in enumerate(names)),
                 "latency_s": point["latency_s"], "dense_latency_s": point["dense_latency_s"],
                 "speedup": point["speedup"],
                 "latency_predicted_s": predicted, "speedup_predicted": table.dense / predicted,
                 "seconds": point.get("seconds"), "choice": summary(choice), "recipe": recipe}
        note(progress, f"search: {label}: prefill x{entry['speedup']:.3f} "
                       f"(predicted x{entry['speedup_predicted']:.3f}), perplexity x{entry['ppl_ratio']:.4f}, "
                       f"{entry['bytes'] / 1e6:.2f} MB")
        return {**entry, "_choice": choice}

    goal = table.dense / target.value  # seconds of one prefill the budget allows
    points = [measure(choice, "baseline", label) for label, choice in _baselines(structure, proxies, table, goal / AIM)]
    uniform = _best_uniform(target, points)
    points += _candidates(structure, proxies, table, target, goal, uniform, measure, setup.deadline)
    chosen = _choose(target, points)

    model_dir, report = final_model(setup, state, chosen)
    timed = compare_latency({"dense": model, "final": load(model_dir).model.eval()}, window, new_tokens=0,
                            repeats=REPEATS)
    speedup = paired_speedup(timed, "dense", "final")
    final = {"bytes_on_disk": int(report["storage"]["tensor_bytes"]), "speedup": speedup,
             "speedup_met": speedup >= target.value, "latency_s": timed["final"].prefill_s,
             "dense_latency_s": timed["dense"].prefill_s, **final_figures(report)}
    pareto = {
        "budget": {"kind": target.kind, "value": target.value, "text": target.text},
        "model": setup.model,
        "runtime": "torch",
        "execution": setup.execution.describe(),
        "space": structure.as_dict(),
        "protocol": {**asdict(protocol), "verify_windows": len(verify), "probe_windows": PROBE_WINDOWS,
                     "verify_source": setup.verify_source,
                     "latency": f"{REPEATS} prefills of one {window.shape[1]}-token window (KV cache and last-token "
                                f"logits), each after one of the dense model's; speed-up: the median of the {REPEATS} "
                                f"ratios; {table.threads} threads"},
        "latency_table": table.as_dict(),
        "dense": {"nll": dense_nll, "latency_s": table.dense},
        "points": [public(p) for p in points],
        "chosen": public(chosen),
        "final": final,
        "search_seconds": time.monotonic() - setup.started,
        # what the result rests on: the scores (this run), the cached steps, every measured point
        "work_seconds": scoring + sum(p.get("seconds") or 0.0 for p in points)
                        + state.seconds(["latency", "structure_proxies", "dense_nll", f"model {model_dir.name}"]),
        "peak_rss_bytes": peak_rss_bytes(),
    }
    write_outputs(out, overwrite, setup.inputs, model_dir, pareto, render_speed_report(pareto))
    return (None if out is None else Path(out)), public(chosen), pareto


def _measured(setup: Setup, structure: Structure, choice: dict[str, str], window: torch.Tensor) -> dict:
    """Cut ``choice`` from a copy of the dense model (:meth:`Structure.build`), and measure its
    loss on the held-out windows, its prefill beside the dense model's and its stored bytes."""
    model = copy.deepcopy(setup.lm.model)
    rest = structure.build(ModelAdapter.from_model(model), choice)
    result = compress(replace(setup.lm, model=model), rest, setup.windows, progress=False,
                      batch_size=setup.execution.batch_size)
    candidate = result.model
    nll = model_nll(candidate, setup.verify, setup.progress)
    timed = compare_latency({"dense": setup.lm.model, "candidate": candidate}, window, new_tokens=0, repeats=REPEATS)
    with tempfile.TemporaryDirectory(prefix="netslim-candidate-") as folder:
        save(result, Path(folder) / "model")  # its stored tensors, counted as the final folder's are
        marker = json.loads((Path(folder) / "model" / NETSLIM_MARKER).read_text(encoding="utf-8"))
    stored = marker["storage"]["summary"]["tensor_bytes"]
    return {"nll": nll, "latency_s": timed["candidate"].prefill_s, "dense_latency_s": timed["dense"].prefill_s,
            "speedup": paired_speedup(timed, "dense", "candidate"), "bytes": stored}


def _options(structure: Structure, proxies: StructureProxies, table: LatencyTable, weighting: float = 1.0,
             ) -> dict[str, list[Option]]:
    loss = option_loss(structure, proxies, weighting)
    return {name: [Option(label, 0, loss(index, label), table.blocks[label]) for label in structure.labels()]
            for index, name in enumerate(structure.names)}


def _uniform_cuts(structure: Structure, table: LatencyTable, goal: float) -> list[Cut]:
    """The uniform width cuts (the same in every block) that the latency table says meet
    ``goal`` seconds: for each number of attention units removed, the one removing fewest
    neurons (the least energy of that count)."""
    fewest: dict[int, Cut] = {}
    for cut in structure.cuts:
        fast = table.predict(_everywhere(structure, cut)) <= goal
        if fast and (cut.units not in fewest or cut.neurons < fewest[cut.units].neurons):
            fewest[cut.units] = cut
    return [fewest[units] for units in sorted(fewest)]


def _lighter_cut(structure: Structure, table: LatencyTable, goal: float, heavy: Cut) -> Cut | None:
    """Of the cuts with less energy than ``heavy`` that the latency table says miss ``goal``
    seconds when in every block, the one closest to meeting it."""
    energy = lambda c: sum(structure.energy(i, c) for i in range(len(structure.names)))  # noqa: E731
    seconds = lambda c: table.predict(_everywhere(structure, c))  # noqa: E731
    lighter = [c for c in structure.cuts if seconds(c) > goal and energy(c) < energy(heavy)]
    return min(lighter, key=seconds, default=None)


def _everywhere(structure: Structure, cut: Cut) -> dict[str, str]:
    """The choice of ``cut`` in every block."""
    return dict.fromkeys(structure.names, cut.label)


def _baselines(structure: Structure, proxies: StructureProxies, table: LatencyTable, goal: float):
    """(label, choice) of the single-method baselines: the uniform width cuts of
    :func:`_uniform_cuts`, and the fewest cheapest blocks removed, that the latency table says
    meet ``goal`` seconds."""
    names = structure.names
    for cut in _uniform_cuts(structure, table, goal):
        yield f"width {cut.label} (uniform)", _everywhere(structure, cut)
    dense = Cut(0, 0).label
    order = sorted(range(len(names)), key=lambda i: proxies.drop_rise[i])
    for count in range(1, len(names)):
        removed = {names[i] for i in order[:count]}
        choice = {n: DROP if n in removed else dense for n in names}
        if table.predict(choice) <= goal:
            yield f"depth, {count} blocks", choice
            return


def _best_uniform(target: Budget, points: list[dict]) -> Cut | None:
    """The uniform width cut with the lowest measured loss among those measured fast enough."""
    uniform = [p for p in points if len(set(p["_choice"].values())) == 1 and DROP not in p["_choice"].values()
               and p["speedup"] >= target.value]
    return Cut.parse(next(iter(min(uniform, key=_rank)["_choice"].values()))) if uniform else None


def _candidates(structure: Structure, proxies: StructureProxies, table: LatencyTable, target: Budget, goal: float,
                uniform: Cut | None, measure, deadline) -> list[dict]:
    """The solver's candidates, measured (module docstring, step 3); ``uniform``: the best
    measured uniform cut, which the near-uniform candidate mixes with the next lighter one."""
    points: list[dict] = []
    seen: set[str] = set()

    def solve(weighting: float, seconds: float, labels: set[str] | None = None) -> dict[str, str] | None:
        options = _options(structure, proxies, table, weighting)
        if labels is not None:
            options = {name: [o for o in offered if o.label in labels] for name, offered in options.items()}
        try:
            allocation = allocate(options, minimize="error", max_latency=seconds - table.fixed)
        except ConfigError:
            return None
        return allocation.choice

    def add(choice: dict[str, str] | None, label: str) -> bool:
        if choice is None or choice_key(choice) in seen:
            return False
        seen.add(choice_key(choice))
        points.append(measure(choice, "candidate", label))
        return True

    for weighting in WEIGHTINGS:
        if late(deadline) and points:
            return points
        add(solve(weighting, goal / AIM), f"allocation, sensitivity^{weighting:g}")
    light = None if uniform is None else _lighter_cut(structure, table, goal / AIM, uniform)
    if light is not None and not late(deadline):  # near uniform: every block takes one of the two
        add(solve(1.0, goal / AIM, {uniform.label, light.label}), f"allocation, {uniform.label} or {light.label}")
    for step in range(REFINE):
        if late(deadline) or not points or any(p["speedup"] >= target.value for p in points[-len(seen):]):
            break
        last = points[-1]  # too slow as measured: tighten by how far its prediction was off
        if not add(solve(1.0, goal / AIM * last["speedup"] / last["speedup_predicted"]),
                   f"allocation, tightened {step + 1}"):
            break
    return points


def _choose(target: Budget, points: list[dict]) -> dict:
    fast = [p for p in points if p["speedup"] >= target.value]
    if not fast:
        best = max(points, key=lambda p: p["speedup"])
        raise NetslimError(f"no measured model met {target.text} (the fastest was x{best['speedup']:.3f}); "
                           "lower the speed-up, or run the search on a quieter machine")
    return min(fast, key=_rank)


def _rank(point: dict) -> tuple[float, float]:
    """Preference among points that meet the budget: the lowest loss, then the fastest."""
    return point["nll"], point["latency_s"]
