"""Shared pieces of the benchmark scripts: the small protocol, sizes, timing, JSON output."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import netslim
from netslim.eval.latency import compare_latency
from netslim.eval.size import count_params
from netslim.models.adapter import ModelAdapter

RESULTS = Path(__file__).parent / "results"
SMALL_PROTOCOL = {
    "model": "smollm2-135m",
    "eval": "wikitext2:test",
    "seqlen": 512,
    "eval_windows": 80,
    "calib": "wikitext2:valid",
    "calib_windows": 64,
    "seed": 0,
}


def protocol_for(quick: bool) -> dict:
    """The small protocol, or its quick variant (8 calibration and 8 evaluation windows)."""
    protocol = dict(SMALL_PROTOCOL)
    if quick:
        protocol.update(eval_windows=8, calib_windows=8)
    return protocol


def calib_windows(lm: netslim.LoadedModel, protocol: dict):
    """The calibration windows of the protocol."""
    return netslim.calibration(lm, source=protocol["calib"], windows=protocol["calib_windows"],
                               seqlen=protocol["seqlen"], seed=protocol["seed"])


def protocol_line(protocol: dict, windows: int | None = None) -> str:
    """The start of a table's protocol note: model, evaluation and calibration windows, seed.

    Args:
        windows: Evaluation windows actually used (default: the protocol's).
    """
    windows = protocol["eval_windows"] if windows is None else windows
    return (f"\nProtocol: {protocol['model']}, WikiText-2 test, first {windows} windows of {protocol['seqlen']} "
            f"tokens; calibration {protocol['calib_windows']} windows of WikiText-2 valid, seed {protocol['seed']}")


def decoder_params(model) -> int:
    """Parameters of the decoder blocks (the shortcut matrices of sliced blocks included)."""
    return count_params(ModelAdapter.from_model(model).blocks)


def side_by_side_latency(dense, model, name: str, prompt, repeats: int, threads: int) -> dict:
    """Prefill of ``prompt`` and 64 generated tokens, ``dense`` and ``model`` (``name``) interleaved."""
    lat = compare_latency({"dense": dense, name: model}, prompt, new_tokens=64, repeats=repeats, threads=threads)
    return {"dense": lat["dense"].as_dict(), name: lat[name].as_dict(),
            "prefill_speedup": lat["dense"].prefill_s / lat[name].prefill_s,
            "generate_speedup": lat["dense"].generate_s / lat[name].generate_s}


@dataclass
class DenseBaseline:
    """Where a benchmark comparing compressed copies of the protocol's model starts.

    Attributes:
        name: Results name (``<base>`` or ``<base>_quick``).
        rows: Rows saved by earlier runs under the same protocol (extended in place).
        dense: The dense model's evaluation and decoder parameters (saved, or measured now).
    """

    name: str
    protocol: dict
    rows: dict
    dense_lm: netslim.LoadedModel
    windows: object
    calib: object
    dense: dict


def dense_baseline(base: str, quick: bool) -> DenseBaseline:
    """The protocol, earlier rows, the dense model with its windows, and its evaluation."""
    protocol = protocol_for(quick)
    name = base + ("_quick" if quick else "")
    saved = saved_results(name, protocol)
    rows = saved.get("results", {})
    dense_lm = netslim.load_model(protocol["model"])
    windows = eval_windows(dense_lm, protocol)
    calib = calib_windows(dense_lm, protocol)
    dense = saved.get("dense")
    if dense is None:
        dense = {**netslim.evaluate(dense_lm, data=windows, progress=False).as_dict(),
                 "decoder_params": decoder_params(dense_lm.model)}
    return DenseBaseline(name, protocol, rows, dense_lm, windows, calib, dense)


def machine() -> dict:
    """Where the figures were measured."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def write_results(name: str, payload: dict, table: str) -> None:
    """Write ``results/<name>.json`` and the markdown table ``results/<name>.md``."""
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), "written": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table + "\n")


def saved_results(name: str, protocol: dict | None = None) -> dict:
    """The payload of ``results/<name>.json`` from an earlier run, so rows accumulate across runs.

    Empty if there is none, or if ``protocol`` is given and the file was measured under another.
    """
    path = RESULTS / f"{name}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    return {} if protocol is not None and saved.get("protocol") != protocol else saved


def eval_windows(lm: netslim.LoadedModel, protocol: dict = SMALL_PROTOCOL):
    """The evaluation windows of the protocol, built once per run."""
    from netslim.api import bos_id
    from netslim.data import evaluation_windows, resolve_text
    from netslim.data.windows import tokenize

    text = resolve_text(protocol["eval"])
    ids = tokenize(lm.tokenizer, text.text)
    return evaluation_windows(ids, protocol["seqlen"], protocol["eval_windows"], bos_id(lm.model, lm.tokenizer), text.name)
