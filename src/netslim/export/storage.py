"""A model's state dict as a packed safetensors file, and what its bytes are spent on.

:func:`write_packed` encodes every tensor with a codec from :mod:`netslim.export.codecs`
(chosen per tensor, or ``dense`` everywhere), writes ``netslim.safetensors`` (a name plain
``transformers`` does not look for, so it cannot silently load random weights) and returns
the records that :func:`read_packed` needs; they go into ``netslim.json`` under ``storage``.
:func:`storage_summary` counts bytes per codec and bits per weight of the decoder's Linear
layers, for ``netslim info`` and the report.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from netslim.errors import ConfigError, NetslimError
from netslim.export.codecs import CODECS, choose_codec, decode, encode

PACKED_FILE = "netslim.safetensors"


def unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each tied tensor once, and ``alias -> kept name`` for the others."""
    state, aliases, seen = {}, {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            state[name] = tensor
    return state, aliases


def plan_codecs(state: dict[str, torch.Tensor], fmt: str, dtype: torch.dtype | None,
                overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Tensor name -> codec: ``dense`` everywhere for ``fmt="dense"``, else chosen per tensor.

    Args:
        overrides: ``fnmatch`` pattern of tensor names -> codec, applied after the choice
            (first matching pattern wins), e.g. ``{"*.mlp.*.weight": "bitmask"}``.

    Raises:
        ConfigError: for an unknown codec in ``overrides``.
    """
    overrides = overrides or {}
    for codec in overrides.values():
        if codec not in CODECS:
            raise ConfigError(f"unknown storage codec '{codec}'; use one of {', '.join(CODECS)}")
    plan = {}
    for name, tensor in state.items():
        codec = "dense" if fmt == "dense" else choose_codec(tensor, dtype)
        plan[name] = next((c for p, c in overrides.items() if fnmatch.fnmatchcase(name, p)), codec)
    return plan


def write_packed(state: dict[str, torch.Tensor], plan: dict[str, str], dtype: torch.dtype | None, folder: Path) -> dict:
    """Encode ``state`` by ``plan`` into ``folder / PACKED_FILE``; return ``name -> record``."""
    parts, records = {}, {}
    for name, tensor in state.items():
        encoded, record = encode(tensor, plan[name], dtype)
        record["bytes"] = sum(t.numel() * t.element_size() for t in encoded.values())
        records[name] = record
        parts.update({f"{name}.{part}": t for part, t in encoded.items()})
    save_file(parts, folder / PACKED_FILE, metadata={"format": "pt", "netslim": "packed"})
    return records


def read_packed(folder: Path, records: dict[str, dict], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """Decode ``folder / PACKED_FILE`` back into a state dict (aliases filled in).

    Raises:
        NetslimError: if the file lacks a part its records name (a damaged folder).
    """
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(folder / PACKED_FILE).items():
        name, _, part = key.rpartition(".")
        grouped.setdefault(name, {})[part] = tensor
    state = {}
    for name, record in records.items():
        parts = grouped.get(name)
        if not parts:
            raise NetslimError(f"'{folder}' lacks the stored tensor '{name}'; the folder is damaged, save it again")
        state[name] = decode(parts, record)
    state.update({alias: state[target] for alias, target in aliases.items()})
    return state


def dense_records(state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Records of a state dict written as is (the ``dense``/``modules`` formats), for the summary."""
    return {name: {"codec": "dense", "bytes": t.numel() * t.element_size()} for name, t in state.items()}


def decoder_linears(model: nn.Module) -> dict[str, int]:
    """Full name -> ``in * out`` of every projection in the decoder blocks (empty if the
    family is unknown)."""
    from netslim.models.adapter import ModelAdapter, linear_weight  # noqa: PLC0415

    try:
        adapter = ModelAdapter.from_model(model)
        modules = {n: m for i in range(adapter.num_blocks) for n, m in adapter.block_linears(i).items()}
    except NetslimError:
        return {}
    sizes = {}
    for name, module in modules.items():
        if hasattr(module, "in_features") and hasattr(module, "out_features"):
            sizes[name] = module.in_features * module.out_features
        else:
            sizes[name] = linear_weight(module).numel()
    return sizes


def storage_summary(records: dict[str, dict], linears: dict[str, int]) -> dict:
    """Bytes per codec, and bytes and bits per weight of the decoder Linear weights.

    A Linear layer's weight bytes are those of every tensor under its name except biases
    (quantized codes with their scales, zeros and group indices; both factors of a factorized
    layer); its weight count is ``in * out`` of the layer it replaces.
    """
    by_codec: dict[str, dict[str, int]] = {}
    for record in records.values():
        entry = by_codec.setdefault(record["codec"], {"tensors": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["bytes"] += record["bytes"]
    linear_bytes = sum(
        r["bytes"] for n, r in records.items()
        if not n.endswith("bias") and any(n.startswith(f"{layer}.") for layer in linears)
    )
    weights = sum(linears.values())
    return {
        "tensor_bytes": sum(r["bytes"] for r in records.values()),
        "by_codec": by_codec,
        "decoder_linears": {
            "weights": weights,
            "bytes": linear_bytes,
            "bits_per_weight": 8 * linear_bytes / weights if weights else None,
        },
    }
