"""Resumable sequential passes: after each block, its compressed weights and the activations
entering the next block are written to a checkpoint folder; a rerun of the same job restores
the finished blocks and continues from the first unfinished one.

Layout of the folder (safetensors and JSON only, nothing is unpickled):
    progress.json             fingerprint of the job, finished block count, layer records
    block-<i>.safetensors     state dict of finished block i
    block-<i>.json            the block's custom modules (quantized, factorized) to rebuild
    hidden.safetensors        activations entering the first unfinished block

The fingerprint covers the recipe, the calibration token ids and the model's config and
weights of block 0, so a checkpoint is never applied to a different job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from netslim.export.modules import module_specs, rebuild_modules
from netslim.models.adapter import ModelAdapter


def job_fingerprint(adapter: ModelAdapter, recipe: list[dict], ids: torch.Tensor | None) -> str:
    """A hash identifying the model, the recipe and the calibration data of a job."""
    digest = hashlib.sha256()
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(adapter.config.to_json_string().encode())
    if ids is not None:
        digest.update(ids.contiguous().numpy().tobytes())
    for tensor in adapter.blocks[0].state_dict().values():
        digest.update(tensor.detach().float().contiguous().numpy().tobytes()[:4096])
    return digest.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Checkpoint:
    """A checkpoint folder for one sequential pass of one job."""

    def __init__(self, folder: str | os.PathLike, fingerprint: str):
        self.folder = Path(folder)
        self.fingerprint = fingerprint

    def _progress(self) -> dict | None:
        file = self.folder / "progress.json"
        if not file.is_file():
            return None
        progress = json.loads(file.read_text(encoding="utf-8"))
        return progress if progress.get("fingerprint") == self.fingerprint else None

    def finished_blocks(self) -> int:
        """How many blocks a previous run of this job finished (0 if none or another job)."""
        progress = self._progress()
        return int(progress["blocks"]) if progress else 0

    def restore(self, adapter: ModelAdapter) -> tuple[int, torch.Tensor | None, list[dict]]:
        """Load the finished blocks into the model.

        Returns:
            ``(blocks, hidden, records)``: number of restored blocks, the activations entering
            the next block (``None`` if the pass is data-free), and the saved layer records.
        """
        progress = self._progress()
        if not progress:
            return 0, None, []
        for index in range(progress["blocks"]):
            block = adapter.blocks[index]
            specs = json.loads((self.folder / f"block-{index}.json").read_text(encoding="utf-8"))
            rebuild_modules(block, specs)
            block.load_state_dict(load_file(self.folder / f"block-{index}.safetensors"))
        hidden_file = self.folder / "hidden.safetensors"
        hidden = load_file(hidden_file)["hidden"] if hidden_file.is_file() else None
        return progress["blocks"], hidden, progress["records"]

    def save_block(self, adapter: ModelAdapter, index: int, hidden: torch.Tensor | None, records: list[dict]) -> None:
        """Record that block ``index`` is finished; ``hidden`` enters block ``index + 1``."""
        self.folder.mkdir(parents=True, exist_ok=True)
        block = adapter.blocks[index]
        state = {k: v.detach().contiguous() for k, v in block.state_dict().items()}
        _atomic_write(self.folder / f"block-{index}.safetensors", lambda p: save_file(state, p))
        specs = json.dumps(module_specs(block))
        _atomic_write(self.folder / f"block-{index}.json", lambda p: p.write_text(specs, encoding="utf-8"))
        if hidden is not None:
            _atomic_write(self.folder / "hidden.safetensors", lambda p: save_file({"hidden": hidden.contiguous()}, p))
        progress = {"fingerprint": self.fingerprint, "blocks": index + 1, "records": records}
        _atomic_write(self.folder / "progress.json", lambda p: p.write_text(json.dumps(progress), encoding="utf-8"))

    def remove(self) -> None:
        """Delete the folder once the job's output is safely written."""
        shutil.rmtree(self.folder, ignore_errors=True)
