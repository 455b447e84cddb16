"""Shared pieces of the benchmark scripts: the small protocol, timing, JSON output."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

import netslim

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
