"""Loading a netslim output folder back into a working model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from netslim.errors import ModelNotFoundError, NetslimError
from netslim.export.modules import rebuild_modules
from netslim.export.storage import read_packed
from netslim.models.loading import NETSLIM_MARKER, LoadedModel, load_hf_folder, load_tokenizer

SUPPORTED_FORMATS = ("dense", "modules", "packed", "slim_plan")


def read_marker(path: str | os.PathLike) -> dict:
    """The ``netslim.json`` of an output folder.

    Raises:
        ModelNotFoundError: if the folder is not a netslim output.
    """
    marker = Path(path) / NETSLIM_MARKER
    if not marker.is_file():
        raise ModelNotFoundError(f"'{path}' is not a netslim output folder (no {NETSLIM_MARKER})")
    return json.loads(marker.read_text(encoding="utf-8"))


def load(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a folder written by :func:`netslim.save` or by ``netslim compress``, rebuilding compressed modules.

    A vision or encoder model pruned by ``netslim compress`` (format ``slim_plan``) is rebuilt
    from its zoo package, then its saved cuts are replayed and its weights loaded.

    Raises:
        ModelNotFoundError: if the folder is not a netslim output.
        NetslimError: if it was written in a storage format this version cannot read.
    """
    folder = Path(path)
    info = read_marker(folder)
    fmt = info.get("format")
    if fmt not in SUPPORTED_FORMATS:
        raise NetslimError(f"'{path}' uses storage format '{fmt}', which this netslim cannot read; upgrade netslim")
    if fmt == "dense":
        return load_hf_folder(folder, dtype, str(path))
    if fmt == "slim_plan":  # a vision or encoder model of the zoo with channels removed
        from netslim.graph.plan import load_pruned  # noqa: PLC0415
        from netslim.models.zoo import load_pretrained  # noqa: PLC0415

        zoo = load_pretrained(info["source"])
        return LoadedModel(load_pruned(zoo.model, folder).to(dtype).eval(), zoo.tokenizer, str(path))
    if fmt == "packed":
        storage = info["storage"]
        state = read_packed(folder, storage["tensors"], storage.get("aliases", {}))
    else:
        state = {}
        for file in sorted(folder.glob("*.safetensors")):
            state.update(load_file(file))
    model = _load_with_modules(folder, info.get("modules", {}), state, dtype)
    return LoadedModel(model, load_tokenizer(folder), str(path))


def _load_with_modules(folder: Path, specs: dict, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """Build the model from its config, rebuild the saved module kinds, load ``state`` into it."""
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    rebuild_modules(model, specs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise NetslimError(
            f"'{folder}' does not match its netslim.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
