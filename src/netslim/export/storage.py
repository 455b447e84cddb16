"""A model's state dict as a packed safetensors file, and what its bytes are spent on.

:func:`write_packed` encodes every tensor with a codec from :mod:`netslim.export.codecs`
(chosen per tensor, or ``dense`` everywhere), writes ``netslim.safetensors`` (a name plain
``transformers`` does not look for, so it cannot silently load random weights) and returns
the records that :func:`read_packed` needs; they go into ``netslim.json`` under ``storage``.
:func:`value_dtypes` says in which dtype each floating tensor's values are stored.
:func:`storage_summary` counts bytes per codec and bits per weight of the decoder's Linear
layers, for ``netslim info`` and the report.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from netslim.errors import ArtifactError, ConfigError, NetslimError
from netslim.export.codecs import CODECS, choose_codec, decode, encode, store_values
from netslim.models.folder import NETSLIM_MARKER

PACKED_FILE = "netslim.safetensors"
PACKED_METADATA = {"format": "pt", "netslim": "packed"}  # the safetensors header metadata of packed files
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def checked_file(file: Path) -> Path:
    """``file``, if it is a complete safetensors file.

    Raises:
        ArtifactError: naming the file, if it is missing, truncated or not safetensors.
    """
    if not file.is_file():
        raise ArtifactError(f"'{file}' is missing; the folder is damaged, save it again")
    try:
        with safe_open(file, "pt"):
            pass
    except (OSError, SafetensorError) as exc:
        raise ArtifactError(f"'{file}' is not a complete safetensors file ({exc}); "
                            "the folder is damaged, save it again") from None
    return file


def unique_state(full: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict with each tied tensor once, and ``alias -> kept name`` for the others.
    Tensors on the meta device (blocks an offloaded run has not loaded) are left out."""
    state, aliases, seen = {}, {}, {}
    for name, tensor in full.items():
        if tensor.is_meta:
            continue
        key = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            state[name] = tensor
    return state, aliases


def value_dtypes(model: nn.Module, dtype: torch.dtype | str | None = "auto",
                 quantized: bool | None = None, state: dict[str, torch.Tensor] | None = None,
                 ) -> dict[str, torch.dtype | None]:
    """Name (as in :func:`unique_state`) -> dtype each floating tensor's values are stored in
    (``None``: its own dtype, exact).

    Args:
        dtype: ``None`` keeps every tensor exact; a floating dtype (``torch.float16``, ...)
            applies to every floating tensor; ``"auto"`` stores the 32- and 64-bit tensors of
            a model with quantized layers in float16 (bfloat16 if the model has bfloat16
            tensors), except the quantized layers' own (scales, zeros, bias), and keeps any
            other model exact. A tensor the value dtype would overflow keeps its own dtype
            (see :func:`netslim.export.codecs.store_values`).
        quantized: For ``"auto"``: whether the model has quantized layers, when ``model``
            holds only part of it (an offloaded run's loaded block); ``None``: look.
        state: The tensors to decide for (meta ones included: their dtype is enough);
            default the model's loaded tensors (:func:`unique_state`).

    Raises:
        ConfigError: for any other ``dtype``.
    """
    if isinstance(dtype, str) and dtype != "auto":  # "float16", "torch.bfloat16", ...
        dtype = next((d for d in VALUE_DTYPES if dtype.removeprefix("torch.") == str(d).removeprefix("torch.")), dtype)
    if dtype != "auto" and dtype is not None and dtype not in VALUE_DTYPES:
        names = ", ".join(str(d) for d in VALUE_DTYPES)
        raise ConfigError(f"storage dtype {dtype!r} is not one of 'auto', None, {names}")
    state = unique_state(model.state_dict())[0] if state is None else state
    floats = {n: t for n, t in state.items() if t.is_floating_point()}
    if dtype == "auto":
        kinds = {f"{name}.": getattr(type(module), "netslim_kind", None) for name, module in model.named_modules()}
        quantized_prefixes = tuple(prefix for prefix, kind in kinds.items() if kind == "quantized")
        floats = {n: t for n, t in floats.items() if not n.startswith(quantized_prefixes)}
        bf16 = any(t.dtype == torch.bfloat16 for t in floats.values())
        dtype = (torch.bfloat16 if bf16 else torch.float16) if (bool(quantized_prefixes) if quantized is None
                                                                  else quantized) else None
        floats = {n: t for n, t in floats.items() if t.element_size() > 2}  # 16-bit tensors keep theirs
    return {name: dtype if name in floats else None for name in state}


def round_values(model: nn.Module, dtypes: dict[str, torch.dtype | None]) -> None:
    """Round ``model``'s tensors in place to the values :func:`write_packed` stores for them."""
    state, _ = unique_state(model.state_dict())
    with torch.no_grad():
        for name, dtype in dtypes.items():
            if dtype is not None:
                state[name].copy_(store_values(state[name], dtype))


def check_codecs(overrides: dict[str, str] | None) -> None:
    """Raises ConfigError for an unknown codec among ``overrides`` (pattern -> codec)."""
    for codec in (overrides or {}).values():
        if codec not in CODECS:
            raise ConfigError(f"unknown storage codec '{codec}'; use one of {', '.join(CODECS)}")


def plan_codecs(state: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype | None],
                overrides: dict[str, str] | None = None, widths: dict[str, int] | None = None) -> dict[str, str]:
    """Tensor name -> codec, chosen per tensor for its value dtype (and declared ``widths``,
    :func:`declared_widths`).

    Args:
        overrides: ``fnmatch`` pattern of tensor names -> codec, applied after the choice
            (first matching pattern wins), e.g. ``{"*.mlp.*.weight": "bitmask"}``.

    Raises:
        ConfigError: for an unknown codec in ``overrides``.
    """
    check_codecs(overrides)
    plan = {}
    for name, tensor in state.items():
        codec = choose_codec(tensor, dtypes[name], (widths or {}).get(name))
        plan[name] = next((c for p, c in (overrides or {}).items() if fnmatch.fnmatchcase(name, p)), codec)
    return plan


def declared_widths(model: nn.Module) -> dict[str, int]:
    """Tensor name -> bit width of the codes and zero points of every quantized layer, so
    that they are packed in the layer's own bits (its stored size then depends on its shape
    and bits only, which a budget can predict exactly)."""
    widths = {}
    for name, module in model.named_modules():
        if getattr(type(module), "netslim_kind", None) == "quantized" and isinstance(getattr(module, "bits", None), int):
            widths.update({f"{name}.codes": module.bits, f"{name}.zeros": module.bits})
    return widths


def write_packed(state: dict[str, torch.Tensor], plan: dict[str, str], dtypes: dict[str, torch.dtype | None],
                 folder: Path, widths: dict[str, int] | None = None, file: str = PACKED_FILE) -> dict:
    """Encode ``state`` by ``plan`` (values in ``dtypes``, integer tensors at least as wide as
    ``widths`` says) into ``folder / file``; return ``name -> record`` (with ``"file"`` when
    it is not :data:`PACKED_FILE`: a folder written shard by shard)."""
    parts, records = {}, {}
    for name, tensor in state.items():
        encoded, record = encode(tensor, plan[name], dtypes[name], (widths or {}).get(name))
        record["bytes"] = sum(t.numel() * t.element_size() for t in encoded.values())
        if file != PACKED_FILE:
            record["file"] = file
        records[name] = record
        parts.update({f"{name}.{part}": t for part, t in encoded.items()})
    save_file(parts, folder / file, metadata=PACKED_METADATA)
    return records


def packed_files(records: dict[str, dict]) -> list[str]:
    """The files a packed folder's records name, :data:`PACKED_FILE` first if any."""
    names = {str(_file_of(record)) for record in records.values()}
    return sorted(names, key=lambda name: (name != PACKED_FILE, name))


def _file_of(record) -> str:
    """The file a record's parts are in (a damaged record that is no object: the default)."""
    return record.get("file", PACKED_FILE) if isinstance(record, dict) else PACKED_FILE


def read_packed(folder: Path, records: dict[str, dict], aliases: dict[str, str]) -> dict[str, torch.Tensor]:
    """Decode ``folder / PACKED_FILE`` back into a state dict (aliases filled in).

    Raises:
        ArtifactError: naming the file, if it is missing or truncated, lacks a part its
            records name, or a record does not match its parts (a damaged or foreign folder).
    """
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for name in packed_files(records):
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise ArtifactError(f"'{folder / NETSLIM_MARKER}' names the weight file '{name}', which is not a "
                                "safetensors file of the folder; the folder is damaged")
        for key, tensor in load_file(checked_file(folder / name)).items():
            tensor_name, _, part = key.rpartition(".")
            grouped.setdefault(tensor_name, {})[part] = tensor
    state = {}
    for name, record in records.items():
        file = folder / str(_file_of(record))
        parts = grouped.get(name)
        if not parts:
            raise ArtifactError(f"'{file}' lacks the stored tensor '{name}'; the folder is damaged, save it again")
        try:
            state[name] = decode(parts, record)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ArtifactError(f"'{file}': the stored tensor '{name}' does not decode by its record in "
                                f"netslim.json ({reason}); the folder is damaged or needs a newer netslim") from None
    for alias, target in aliases.items():
        if target not in state:
            raise ArtifactError(f"'{folder}' lacks the stored tensor '{target}' (of '{alias}'); the folder is damaged")
        state[alias] = state[target]
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
