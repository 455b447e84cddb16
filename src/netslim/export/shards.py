"""Writing a packed output folder one decoder block at a time (``--offload``).

Each block is written to its own file (``netslim-00001.safetensors``, ...) as soon as it is
compressed, with the codecs and value dtypes :func:`netslim.save` would choose, and its values
rounded in place to what is stored, so that what is measured next is what the folder holds.
The tensors outside the blocks (embeddings, final norm, head) go to ``netslim-rest.safetensors``
at the end; a vocabulary matrix that is not loaded is copied into it from its checkpoint a
slice of rows at a time (:meth:`PackedShards.finish`), so it is never whole in memory.
:func:`netslim.load` reads the folder like any packed one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from netslim.export.codecs import MIN_SPARSITY, dense_record, encode, store_values
from netslim.export.modules import module_specs
from netslim.export.save import SavedResult, finish_folder, packed_storage, reference_model, write_configs
from netslim.export.storage import (
    PACKED_METADATA,
    declared_widths,
    plan_codecs,
    round_values,
    unique_state,
    value_dtypes,
    write_packed,
)
from netslim.models.adapter import ModelAdapter

REST_FILE = "netslim-rest.safetensors"
_SAFETENSORS_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                       torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
                       torch.uint8: "U8", torch.bool: "BOOL"}

Rows = Callable[[], Iterable[torch.Tensor]]  # a tensor's rows in order, a slice at a time


class PackedShards:
    """A packed folder being written block by block into ``folder`` (an atomic temp folder).

    Args:
        model: The model; blocks not loaded hold meta tensors.
        quantizes: Whether the recipe quantizes, so float tensors beside quantized layers are
            stored in 16 bits in every block, as :func:`netslim.save` does for a whole model.
    """

    def __init__(self, model: nn.Module, folder: Path, quantizes: bool):
        self.model, self.folder, self.quantizes = model, Path(folder), quantizes
        self.adapter = ModelAdapter.from_model(model)
        self.records: dict[str, dict] = {}
        self.dtypes: dict = {}

    def write_block(self, index: int) -> None:
        """Round block ``index``'s values to their stored dtype and write its file."""
        prefix = f"{self.adapter.block_name(index)}."
        self._write(lambda name: name.startswith(prefix), f"netslim-{index + 1:05d}.safetensors")

    def finish(self, result: SavedResult, unloaded: dict[str, Rows] | None = None) -> None:
        """Write the tensors outside the blocks, the configs, the tokenizer, the marker and the report.

        Every block must have been written and unloaded first. ``unloaded``: tensors outside the
        blocks left on the meta device (an offloaded model's vocabulary matrices), each with a
        reader of its rows; they are stored as :func:`netslim.save` would store them, streamed
        slice by slice when that is the dense codec."""
        prefix = f"{self.adapter.spec.layers}."
        aliases = self._write_rest(lambda name: not name.startswith(prefix), unloaded or {})
        write_configs(self.model, self.folder)
        modules = module_specs(self.model, reference_model(self.model))
        storage = packed_storage(self.model, self.records, aliases, self.dtypes)
        finish_folder(self.folder, result, "packed", modules, storage)

    def _write(self, keep, file: str) -> dict[str, str]:
        """Write the loaded tensors whose names ``keep`` accepts to ``file``; return their aliases."""
        state, aliases = unique_state(self.model.state_dict())
        state = {name: tensor for name, tensor in state.items() if keep(name)}
        quantized = True if self.quantizes else None
        dtypes = {name: d for name, d in value_dtypes(self.model, "auto", quantized).items() if name in state}
        round_values(self.model, dtypes)
        plan = plan_codecs(state, dtypes, None, declared_widths(self.model))
        self.records.update(write_packed(state, plan, dtypes, self.folder, declared_widths(self.model), file))
        self.dtypes.update(dtypes)
        return {alias: target for alias, target in aliases.items() if keep(alias)}

    def _write_rest(self, keep, unloaded: dict[str, Rows]) -> dict[str, str]:
        """:meth:`_write` for :data:`REST_FILE`, with the ``unloaded`` tensors read row slice by
        row slice: streamed into the file when they are stored dense, else read whole."""
        if not unloaded:
            return self._write(keep, REST_FILE)
        params = dict(self.model.named_parameters(remove_duplicate=False))
        state, aliases = unique_state(self.model.state_dict())
        state = {name: tensor for name, tensor in state.items() if keep(name)}
        quantized = True if self.quantizes else None
        dtypes = value_dtypes(self.model, "auto", quantized, state={**state, **{n: params[n] for n in unloaded}})
        streamed = {}
        for name, rows in unloaded.items():
            aliases.update({n: name for n, p in params.items() if p is params[name] and n != name})
            dense, fits = _streams_dense(rows, dtypes[name])
            if not fits:
                dtypes[name] = None  # store_values would keep the tensor's own dtype
            if dense:
                streamed[name] = rows
            else:
                state[name] = torch.cat(list(rows()))
        round_values(self.model, {n: d for n, d in dtypes.items() if n in state and n not in unloaded})
        widths = declared_widths(self.model)
        plan = plan_codecs(state, {n: dtypes[n] for n in state}, None, widths)
        parts: dict[str, tuple[torch.dtype, list[int], Rows]] = {}
        for name, tensor in state.items():
            encoded, record = encode(tensor, plan[name], dtypes[name], widths.get(name))
            record.update(bytes=sum(t.numel() * t.element_size() for t in encoded.values()), file=REST_FILE)
            self.records[name] = record
            parts.update({f"{name}.{part}": (t.dtype, list(t.shape), lambda t=t: [t]) for part, t in encoded.items()})
        for name, rows in streamed.items():
            meta = params[name]
            stored = dtypes[name] or meta.dtype
            record = dense_record(list(meta.shape), meta.dtype, stored)
            self.records[name] = record | {"bytes": meta.numel() * stored.itemsize, "file": REST_FILE}
            parts[f"{name}.data"] = (stored, list(meta.shape),
                                     lambda rows=rows, d=dtypes[name]: (store_values(r, d) for r in rows()))
        write_streamed(self.folder / REST_FILE, parts)
        self.dtypes.update(dtypes)
        return {alias: target for alias, target in aliases.items() if keep(alias)}


def _streams_dense(rows: Rows, dtype: torch.dtype | None) -> tuple[bool, bool]:
    """``(dense, fits)`` for a float matrix read slice by slice: whether ``format="auto"``
    stores it with the dense codec for sure (not integer-valued, and a smaller share of zeros
    than :data:`MIN_SPARSITY`), and whether its values fit in ``dtype``."""
    count = nonzero = 0
    integral = fits = True
    for part in rows():
        count, nonzero = count + part.numel(), nonzero + int(torch.count_nonzero(part))
        integral = integral and torch.equal(part, part.round())
        if dtype is not None and fits:
            fits = bool(torch.isfinite(part.to(dtype)).all()) or not bool(torch.isfinite(part).all())
    return not integral and 1 - nonzero / max(1, count) < MIN_SPARSITY, fits


def write_streamed(file: Path, parts: dict[str, tuple[torch.dtype, list[int], Rows]]) -> None:
    """A safetensors file of ``parts`` (key -> dtype, shape, reader of its rows), written one
    slice at a time, so that no tensor need be whole in memory (``safetensors.torch.save_file``
    takes whole tensors and copies them)."""
    header: dict = {"__metadata__": PACKED_METADATA}
    offset = 0
    for key, (dtype, shape, _) in parts.items():
        size = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with open(file, "wb") as handle:
        handle.write(len(blob).to_bytes(8, "little") + blob)
        for key, (dtype, _, rows) in parts.items():
            written = 0
            for part in rows():
                data = part.detach().to("cpu", dtype).contiguous().view(-1).view(torch.uint8).numpy()
                written += handle.write(data)
            begin, end = header[key]["data_offsets"]
            if written != end - begin:
                raise ValueError(f"'{key}' gave {written} bytes for {end - begin}")  # a reader's bug

