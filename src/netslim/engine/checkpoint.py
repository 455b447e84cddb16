"""Resumable sequential passes: after each block, its compressed weights and the activations
entering the next block are written to a checkpoint folder; a rerun of the same job restores
the finished blocks and continues from the first unfinished one.

Layout of a job's folder, ``<checkpoint_dir>/<first 16 hex digits of the fingerprint>/``
(safetensors and JSON only, nothing is unpickled):

    step-<i>/                 block i is finished
        block.safetensors     state dict of block i
        step.json             fingerprint, block index, elapsed compression seconds so far,
                              the block's custom modules (quantized, factorized) to rebuild,
                              and the layer records so far
        hidden.safetensors    activations entering block i + 1; only in the newest step (older
                              ones are deleted), absent when the pass is data-free or i is last
    .step-<i>.tmp/            a step being written; removed by the next run

A step is written in full as ``.step-<i>.tmp`` and committed by renaming it to ``step-<i>``,
so weights, activations and progress always belong together: a kill leaves either the old
state or the new one. The number of ``step-*`` folders is the number of finished blocks.

The fingerprint hashes the recipe, the calibration token ids, the model's config and every
tensor of its state dict (names, dtypes, shapes and bytes), so a checkpoint is never applied
to a different job. A folder that does not restore cleanly (unreadable JSON, a missing or
truncated file, shapes that do not fit the model) is deleted with one line on stderr, and the
pass starts over from block 0. The custom module kinds are rebuilt through
:mod:`netslim.export.modules`, which imports each kind's defining module on first use, so a
fresh process needs nothing imported beforehand.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netslim.export.modules import module_specs, rebuild_modules
from netslim.models.adapter import ModelAdapter

_STEP = re.compile(r"step-(\d+)")


def job_fingerprint(adapter: ModelAdapter, recipe: list[dict], ids: torch.Tensor | None) -> str:
    """A hash identifying the model (its config and whole state dict), the recipe and the
    calibration data of a job. Hashes about 2 GB/s of weights on one core."""
    digest = hashlib.sha256()
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    digest.update(adapter.config.to_json_string().encode())
    if ids is not None:
        _hash_tensor(digest, "calibration ids", ids)
    for name, tensor in adapter.model.state_dict().items():
        _hash_tensor(digest, name, tensor)
    return digest.hexdigest()


def _hash_tensor(digest, name: str, tensor: torch.Tensor) -> None:
    """Add the name, dtype, shape and raw bytes of ``tensor`` (any dtype, bf16 included)."""
    tensor = tensor.detach()
    digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
    digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())


class Restored(NamedTuple):
    """What :meth:`Checkpoint.restore` gives back."""

    blocks: int  # finished blocks loaded into the model
    hidden: torch.Tensor | None  # activations entering block ``blocks``
    records: list[dict]  # the layer records of the finished blocks
    seconds: float  # compression seconds earlier runs spent on the finished blocks


class Checkpoint:
    """A checkpoint folder for one sequential pass of one job.

    Args:
        folder: The job's folder (netslim creates and owns it).
        fingerprint: :func:`job_fingerprint` of the job.
        started: ``time.perf_counter()`` when this run began, for the elapsed seconds each
            step records (default: now).
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: str, started: float | None = None):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.started = time.perf_counter() if started is None else started
        self.restored_seconds = 0.0  # seconds earlier runs spent on the restored blocks

    def _step(self, index: int) -> Path:
        return self.folder / f"step-{index}"

    def restore(self, adapter: ModelAdapter, hidden: torch.Tensor | None) -> Restored:
        """Load the finished blocks into the model.

        The whole folder is checked against the model first (on a copy of each block), so a
        damaged or foreign folder changes nothing: it is deleted, one line saying why goes to
        stderr, and the pass starts over.

        Args:
            hidden: This run's activations entering block 0 (``None`` if the pass is
                data-free); the restored activations must have their shape and dtype.

        Returns:
            The restored state; ``Restored(0, hidden, [], 0.0)`` when there is none.
        """
        nothing = Restored(0, hidden, [], 0.0)
        if not self.folder.is_dir():
            return nothing
        for tmp in self.folder.glob(".step-*.tmp"):  # a step a killed run did not commit
            shutil.rmtree(tmp, ignore_errors=True)
        try:
            restored = self._check(adapter, hidden)
        except Exception as error:  # whatever a damaged or foreign folder makes fail
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            print(f"netslim: discarding the checkpoint in {self.folder}: {reason}; starting over", file=sys.stderr)
            self.remove()
            return nothing
        for index in range(restored.blocks):
            _load_block(adapter.blocks[index], self._step(index))
        self.restored_seconds = restored.seconds
        return restored

    def _check(self, adapter: ModelAdapter, hidden: torch.Tensor | None) -> Restored:
        """The restorable state, after loading every step into a throwaway copy of its block.

        Raises:
            Exception: of any kind, if some part of the folder does not fit this job.
        """
        names = [p.name for p in self.folder.iterdir()]
        steps = sorted(int(m.group(1)) for name in names if (m := _STEP.fullmatch(name)))
        if steps != list(range(len(steps))) or len(steps) > adapter.num_blocks:
            raise ValueError(f"step folders {steps} are not blocks 0 to n-1 of a {adapter.num_blocks}-block model")
        if not steps:
            return Restored(0, hidden, [], 0.0)
        for index in steps:
            try:
                step = self._read_step(index)
                _load_block(copy.deepcopy(adapter.blocks[index]), self._step(index), step["specs"])
                if hidden is not None and index == steps[-1] and len(steps) < adapter.num_blocks:
                    hidden = _read_hidden(self._step(index), hidden)
            except Exception as error:
                raise ValueError(f"step-{index}: {error}") from error
        return Restored(len(steps), hidden, step["records"], float(step["seconds"]))

    def _read_step(self, index: int) -> dict:
        """The checked ``step.json`` of step ``index``."""
        step = json.loads((self._step(index) / "step.json").read_text(encoding="utf-8"))
        if not isinstance(step, dict) or step.get("fingerprint") != self.fingerprint or step.get("block") != index:
            raise ValueError(f"step.json is not the record of block {index} of this job")
        records = step.get("records")
        if (not isinstance(step.get("specs"), dict) or not isinstance(step.get("seconds"), (int, float))
                or not isinstance(records, list)
                or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in records)):
            raise ValueError("step.json lacks valid specs, seconds or records")
        return step

    def save_block(self, adapter: ModelAdapter, index: int, hidden: torch.Tensor | None, records: list[dict]) -> None:
        """Commit block ``index`` as finished, in one rename.

        Args:
            hidden: The activations entering block ``index + 1`` (``None`` if data-free;
                not saved after the last block).
            records: The layer records so far.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".step-{index}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        block = adapter.blocks[index]
        save_file({k: v.detach().contiguous() for k, v in block.state_dict().items()}, tmp / "block.safetensors")
        if hidden is not None and index + 1 < adapter.num_blocks:
            save_file({"hidden": hidden.contiguous()}, tmp / "hidden.safetensors")
        specs = module_specs(block)
        specs.pop("", None)  # the block's own kind is the input model's, which the fingerprint fixes
        seconds = self.restored_seconds + time.perf_counter() - self.started
        step = {"fingerprint": self.fingerprint, "block": index, "seconds": seconds, "specs": specs, "records": records}
        (tmp / "step.json").write_text(json.dumps(step), encoding="utf-8")
        shutil.rmtree(self._step(index), ignore_errors=True)  # exists only if a run failed to restore it
        os.replace(tmp, self._step(index))
        for older in range(index):  # only the newest step's activations are needed
            (self._step(older) / "hidden.safetensors").unlink(missing_ok=True)

    def remove(self) -> None:
        """Delete the folder (once the job's output is safely written, or when it is damaged)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _read_hidden(step: Path, like: torch.Tensor) -> torch.Tensor:
    """The step's saved activations, on the device of ``like``, which they must match in shape and dtype."""
    saved = load_file(step / "hidden.safetensors", device=str(like.device))["hidden"]
    if saved.shape != like.shape or saved.dtype != like.dtype:
        raise ValueError(f"saved activations are {tuple(saved.shape)} {saved.dtype}, expected {tuple(like.shape)} {like.dtype}")
    return saved


def _load_block(block: nn.Module, step: Path, specs: dict | None = None) -> None:
    """Rebuild the custom modules of ``block`` and load its saved state (strictly, keeping the
    saved dtypes, on the block's device)."""
    if specs is None:
        specs = json.loads((step / "step.json").read_text(encoding="utf-8"))["specs"]
    device = next(itertools.chain(block.parameters(), block.buffers())).device
    rebuild_modules(block, specs)
    block.load_state_dict(load_file(step / "block.safetensors", device=str(device)), assign=True)
