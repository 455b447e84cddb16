"""What every budget search shares: its cache folder and state (so an interrupted search
resumes), and small helpers for points and progress."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from netslim.budget.outputs import render_pareto
from netslim.data.windows import TokenWindows
from netslim.engine.checkpoint import job_fingerprint
from netslim.engine.execution import Execution
from netslim.export.atomic import atomic_folder
from netslim.job import Protocol, compress_job
from netslim.models.adapter import ModelAdapter
from netslim.models.folder import LoadedModel
from netslim.models.loading import cache_dir


@dataclass
class Setup:
    """A search's model and settings, checked and loaded.

    Attributes:
        model: The model as the user named it (the final compression reloads it from there).
        lm / adapter: The loaded model (dense; candidates are built on it or on copies).
        protocol / execution: How it is calibrated, evaluated and run.
        inputs: Paths the output must not touch.
        started / deadline: ``time.monotonic()`` at the start, and when refinement stops.
        windows / verify: Calibration windows, and held-out windows every candidate is measured on.
        verify_source: Where those held-out windows come from, in words.
    """

    model: str
    lm: LoadedModel
    adapter: ModelAdapter
    protocol: Protocol
    execution: Execution
    inputs: list[str]
    started: float
    deadline: float | None
    progress: bool
    windows: TokenWindows | None = None
    verify: torch.Tensor | None = None
    verify_source: str = ""


def final_model(setup: Setup, state: State, chosen: dict) -> tuple[Path, dict]:
    """The chosen point compressed for real from the model's source (``compress_job``, with
    the final evaluation), cached; returns its folder and report."""
    model_dir = state.folder / "models" / choice_key(chosen["_choice"])
    if not (model_dir / "report.json").is_file():
        start = time.monotonic()
        compress_job(setup.model, chosen["recipe"], model_dir, setup.protocol, overwrite=False,
                     progress=setup.progress, execution=replace(setup.execution, offload=False))
        state.data.setdefault("seconds", {})[f"model {model_dir.name}"] = time.monotonic() - start
        state.save()
    return model_dir, json.loads((model_dir / "report.json").read_text(encoding="utf-8"))


def final_figures(report: dict) -> dict:
    """The final model's evaluation, from its report."""
    return {"ppl": report["compressed"]["ppl"], "dense_ppl": report["baseline"]["ppl"],
            "ppl_ratio": report["compressed"]["ppl"] / report["baseline"]["ppl"],
            "compress_seconds": report["compress_seconds"]}


def write_outputs(out, overwrite: bool, inputs: list[str], model_dir: Path, pareto: dict, report: str) -> None:
    """Write ``out`` atomically (model/, pareto.json, pareto.png, report.md) and free the cached model."""
    if out is None:
        return
    with atomic_folder(out, overwrite, inputs=inputs) as tmp:
        shutil.copytree(model_dir, tmp / "model")
        (tmp / "pareto.json").write_text(json.dumps(pareto, indent=2), encoding="utf-8")
        render_pareto(pareto, tmp / "pareto.png")
        (tmp / "report.md").write_text(report, encoding="utf-8")
    shutil.rmtree(model_dir, ignore_errors=True)


def summary(choice: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in choice.values():
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))


def public(point: dict) -> dict:
    return {k: v for k, v in point.items() if not k.startswith("_")}


def choice_key(choice: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(choice.items())).encode()).hexdigest()[:16]


def float_count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def late(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() > deadline


def note(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        tqdm.write(message)


def work_dir(adapter: ModelAdapter, settings: dict, ids: torch.Tensor, execution: Execution) -> Path:
    """The cache folder of a search, keyed by the model, its calibration ids and ``settings``
    (the space, the protocol, the version of the proxies); the execution dtype when not float32."""
    settings = dict(settings)
    if execution.dtype != "float32":  # float32 searches keep the keys of earlier versions
        settings["dtype"] = execution.dtype
    folder = cache_dir() / "search" / job_fingerprint(adapter, [settings], ids)[:20]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class State:
    """What a search keeps in the cache to resume: its proxies, the dense loss, the measured points."""

    folder: Path
    data: dict[str, Any]

    @classmethod
    def load(cls, folder: Path) -> State:
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

    def cached(self, name: str, compute) -> Any:
        """``compute()`` (JSON data), computed once: kept in the state with what it cost."""
        if name not in self.data:
            start = time.monotonic()
            self.data[name] = compute()
            self.data.setdefault("seconds", {})[name] = time.monotonic() - start
            self.save()
        return self.data[name]

    def dense(self, compute) -> float:
        return self.cached("dense_nll", compute)

    def point(self, choice: dict[str, str], compute) -> dict:
        """A measured point (``nll``, and ``seconds``: what measuring it cost, when it was)."""
        points = self.data.setdefault("points", {})
        key = choice_key(choice)
        if key not in points:
            start = time.monotonic()
            points[key] = {**compute(), "seconds": time.monotonic() - start}
            self.save()
        return points[key]

    def seconds(self, names: list[str]) -> float:
        """What the cached results ``names`` cost when they were computed (in this run or an
        earlier one it reuses)."""
        seconds = self.data.get("seconds", {})
        return sum(seconds.get(name, 0.0) for name in names)
