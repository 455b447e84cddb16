"""Loading a netslim output folder back into a working model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from netslim.errors import ModelNotFoundError, NetslimError
from netslim.export.modules import rebuild_modules
from netslim.export.storage import ArtifactError, checked_file, packed_files, read_packed
from netslim.models.folder import NETSLIM_MARKER, LoadedModel, load_hf_folder, load_tokenizer

SUPPORTED_FORMATS = ("dense", "modules", "packed", "slim_plan")
# Keys of netslim.json and their JSON types: those every format has, those some formats need,
# and those checked wherever present.
_MARKER_KEYS = {"format": str, "netslim_version": str, "source": (str, type(None)), "recipe": list}
_FORMAT_KEYS = {"packed": {"storage": dict, "modules": dict}, "modules": {"modules": dict}}
_OPTIONAL_KEYS = {"storage": dict, "modules": dict}


def _json_object(file: Path) -> dict:
    """The JSON object in ``file``.

    Raises:
        ArtifactError: naming the file, if it is not valid JSON or not an object.
    """
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"'{file}' is not valid JSON ({exc}); the folder is damaged") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"'{file}' holds a JSON {type(data).__name__}, not an object; the folder is damaged")
    return data


def _require(file: Path, key: str, value, kind) -> None:
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ArtifactError(f"'{file}' has no '{key}' of type {names}; the folder is damaged or not netslim's")


def read_marker(path: str | os.PathLike) -> dict:
    """The ``netslim.json`` of an output folder, with its keys checked.

    Raises:
        ModelNotFoundError: if the folder is not a netslim output.
        ArtifactError: if ``netslim.json`` is not a JSON object with the keys of its format.
    """
    marker = Path(path) / NETSLIM_MARKER
    if not marker.is_file():
        raise ModelNotFoundError(f"'{path}' is not a netslim output folder (no {NETSLIM_MARKER})")
    info = _json_object(marker)
    optional = {k: v for k, v in _OPTIONAL_KEYS.items() if k in info}
    for key, kind in {**_MARKER_KEYS, **optional, **_FORMAT_KEYS.get(info.get("format"), {})}.items():
        _require(marker, key, info.get(key), kind)
    if info["format"] == "packed":
        _require(marker, "storage.tensors", info["storage"].get("tensors"), dict)
        _require(marker, "storage.aliases", info["storage"].get("aliases", {}), dict)
    return info


def read_report(path: str | os.PathLike) -> dict | None:
    """The ``report.json`` of an output folder, or ``None`` if it has none.

    Raises:
        ArtifactError: if it is not a JSON object.
    """
    report = Path(path) / "report.json"
    return _json_object(report) if report.is_file() else None


def weight_files(folder: Path, info: dict) -> list[Path]:
    """The weight files of a netslim folder, each checked to be present and complete.

    Raises:
        ArtifactError: naming the first missing or truncated file.
    """
    if info["format"] == "packed":
        return [checked_file(folder / name) for name in packed_files(info["storage"]["tensors"])]
    # model.safetensors, or the shards save_pretrained splits a large model into
    files = [checked_file(f) for f in sorted(folder.glob("*.safetensors"))]
    return files or [checked_file(folder / "model.safetensors")]


def load(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a folder written by :func:`netslim.save` or by ``netslim compress``, rebuilding compressed modules.

    A vision or encoder model pruned by ``netslim compress`` (format ``slim_plan``) is rebuilt
    from its zoo package, then its saved cuts are replayed and its weights loaded.

    Raises:
        ModelNotFoundError: if the folder is not a netslim output.
        ArtifactError: naming the file, if a file of the folder is missing or damaged.
        NetslimError: if it was written in a storage format this version cannot read.
    """
    folder = Path(path)
    info = read_marker(folder)
    fmt = info["format"]
    if fmt not in SUPPORTED_FORMATS:
        raise NetslimError(f"'{path}' uses storage format '{fmt}', which this netslim cannot read; upgrade netslim")
    files = weight_files(folder, info)
    if fmt == "packed":
        storage = info["storage"]
        state = read_packed(folder, storage["tensors"], storage.get("aliases", {}))
    else:
        if fmt == "dense":
            return load_hf_folder(folder, dtype, str(path))
        if fmt == "slim_plan":  # a vision or encoder model of the zoo with channels removed
            from netslim.graph.plan import load_pruned  # noqa: PLC0415
            from netslim.models.zoo import load_pretrained  # noqa: PLC0415

            zoo = load_pretrained(info["source"])
            return LoadedModel(load_pruned(zoo.model, folder).to(dtype).eval(), zoo.tokenizer, str(path))
        state = {}  # "modules", written by older versions: model.safetensors plus module specs
        for file in files:
            state.update(load_file(file))
    model = _load_with_modules(folder, info["modules"], state, dtype)
    return LoadedModel(model, load_tokenizer(folder), str(path))


def _load_with_modules(folder: Path, specs: dict, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """Build the model from its config, rebuild the saved module kinds, load ``state`` into it."""
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: PLC0415

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    try:
        rebuild_modules(model, specs)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"'{folder / NETSLIM_MARKER}' has a module this netslim cannot rebuild "
                            f"({type(exc).__name__}: {exc}); the folder is damaged or needs a newer netslim") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a stored shape that differs from the rebuilt module's
        reason = str(exc).splitlines()[-1].strip()
        raise NetslimError(f"'{folder}' does not match its netslim.json ({reason})") from None
    for param in model.parameters():  # the rebuilt modules' parameters (factors, shortcuts) are made in float32
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
    if missing or unexpected:
        raise NetslimError(
            f"'{folder}' does not match its netslim.json: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model.eval()
