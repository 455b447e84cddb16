"""A causal LM whose decoder blocks are read from their safetensors files one at a time.

:func:`open_lazy` builds the model from its config with every parameter on the meta device
(accelerate's ``init_empty_weights``: no memory; the buffers the config computes, such as
rotary frequencies, are real). :meth:`LazyModel.load_block` reads one block's tensors from the
checkpoint onto the compute device in the compute dtype; :meth:`LazyModel.unload_block` puts
them back on the meta device, so that a pass over the blocks holds one block at a time. The
tensors outside the blocks (token embeddings, final norm, head) are read and freed the same
way (:meth:`LazyModel.load_outside`), only while they are needed. The vocabulary matrices
(token embedding and head) are never read whole: capturing the states that enter block 0 reads
only the embedding rows of the tokens in use (:meth:`LazyModel.load_embeddings`), and the head
is read a slice of the vocabulary at a time (:meth:`LazyModel.read_rows`).

The checkpoint is checked before anything is read: every tensor the config builds must be in
its files under the same name and shape, and no file may hold a tensor the config lacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from netslim.errors import ConfigError, ModelFileError, NetslimError
from netslim.models.adapter import ModelAdapter
from netslim.models.registry import family_for_model_type
from netslim.models.folder import (
    CONFIG_FILE,
    check_causal_lm,
    check_no_custom_code,
    check_weights,
    load_tokenizer,
    read_model_config,
)

_READABLE = ("F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL")  # safetensors dtypes read here
ROWS_PER_READ = 8192  # rows of a vocabulary matrix read at a time (20 MiB of float32 at width 640)


@dataclass
class LazyModel:
    """A model skeleton plus where each of its tensors lies in the checkpoint.

    Attributes:
        model: The model; blocks not loaded hold meta tensors.
        tokenizer: The folder's tokenizer (``None`` if it has none).
        source: What the user named.
        files: Tensor name -> the safetensors file that holds it.
        dtype: Floating type the tensors are cast to when read.
        device: Where they are put.
    """

    model: nn.Module
    tokenizer: object | None
    source: str
    files: dict[str, Path]
    dtype: torch.dtype
    device: torch.device
    adapter: ModelAdapter = field(init=False)
    padding_idx: int | None = field(init=False)  # the embedding's, unset while only some rows are read

    def __post_init__(self) -> None:
        self.adapter = ModelAdapter.from_model(self.model)
        self.padding_idx = self.model.get_input_embeddings().padding_idx

    def block_prefix(self, index: int) -> str:
        """``model.layers.3.``: the name prefix of block ``index``'s tensors."""
        return f"{self.adapter.block_name(index)}."

    def load_block(self, index: int) -> None:
        """Read block ``index``'s tensors from the checkpoint onto the device."""
        prefix = self.block_prefix(index)
        self._read([name for name in self.files if name.startswith(prefix)])

    def unload_block(self, index: int) -> None:
        """Put block ``index``'s tensors (compressed or not) back on the meta device."""
        self.adapter.blocks[index].to("meta")

    @property
    def embedding_name(self) -> str:
        """The checkpoint name of the token embedding matrix."""
        return self._weight_name(self.model.get_input_embeddings())

    @property
    def head_name(self) -> str:
        """The checkpoint name of the head's matrix (the embedding's when they are tied)."""
        name = self._weight_name(self.model.get_output_embeddings())
        return name if name in self.files else self.embedding_name

    @property
    def matrices(self) -> tuple[str, ...]:
        """The vocabulary matrices (embedding and head, once when tied): never read whole."""
        return tuple(dict.fromkeys((self.embedding_name, self.head_name)))

    def _weight_name(self, module: nn.Module) -> str:
        names = [f"{n}.weight" for n, m in self.model.named_modules(remove_duplicate=False) if m is module]
        return next((n for n in names if n in self.files), names[0])

    def load_outside(self, matrices: bool = True) -> None:
        """Read the tensors outside the blocks (embeddings, final norm, head) onto the device;
        with ``matrices=False`` all but the vocabulary matrices (:attr:`matrices`)."""
        prefix = f"{self.adapter.spec.layers}."
        skip = () if matrices else self.matrices
        self._read([name for name in self.files if not name.startswith(prefix) and name not in skip])
        if matrices and getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def load_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """Read what the model needs before block 0 to embed ``ids``: the tensors outside the
        blocks but the head, and of the token embedding only the rows of the tokens in ``ids``.
        Returns ``ids`` renumbered into those rows, to feed the model in their place (nothing
        but the embedding reads token ids). :meth:`unload_outside` undoes it."""
        self.load_outside(matrices=False)
        used = torch.unique(ids)
        rows = [part[used[(used >= start) & (used < start + len(part))] - start]
                for start, part in self.read_rows(self.embedding_name)]
        embedding = self.model.get_input_embeddings()
        embedding.weight = nn.Parameter(torch.cat(rows), requires_grad=False)
        embedding.padding_idx = None  # it may be past the rows kept (it only matters for gradients)
        return torch.searchsorted(used, ids)

    def unload_outside(self) -> None:
        """Put the tensors outside the blocks that the checkpoint holds back on the meta device
        (buffers the config computes, such as Gemma's embedding scale, stay)."""
        from accelerate.utils import set_module_tensor_to_device  # noqa: PLC0415

        prefix, embedding_name = f"{self.adapter.spec.layers}.", self.embedding_name
        embedding = self.model.get_input_embeddings()
        for name in self.files:
            if name == embedding_name:  # whole or rows only: the full shape, on meta
                embedding.weight = nn.Parameter(torch.empty(self._shape(name), dtype=self.dtype, device="meta"),
                                                requires_grad=False)
                embedding.padding_idx = self.padding_idx
            elif not name.startswith(prefix):
                set_module_tensor_to_device(self.model, name, "meta")
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()  # the head shares the embedding: now the meta one

    def read_rows(self, name: str, rows: int = ROWS_PER_READ):
        """``(first row, tensor of up to rows rows)`` of checkpoint tensor ``name``, in order, in
        the compute dtype and on the device; the file is mapped only while each slice is read."""
        for start in range(0, self._shape(name)[0], rows):
            with safe_open(self.files[name], framework="pt", device="cpu") as handle:
                part = handle.get_slice(name)[start:start + rows].clone()  # owned, not tied to the mapping
            yield start, self._cast(part)

    def _shape(self, name: str) -> list[int]:
        with safe_open(self.files[name], framework="pt", device="cpu") as handle:
            return handle.get_slice(name).get_shape()

    def _cast(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor.to(self.dtype) if tensor.is_floating_point() else tensor).to(self.device)

    def _read(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device  # noqa: PLC0415

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for file, group in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as handle:
                for name in group:
                    set_module_tensor_to_device(self.model, name, self.device, value=self._cast(handle.get_tensor(name)))


def open_lazy(folder: Path, dtype: torch.dtype, device: torch.device, source: str) -> LazyModel:
    """The model of a Hugging Face folder with no weights loaded yet.

    Raises:
        CustomCodeError, UnsupportedModelError: as :func:`netslim.load_model`.
        ModelFileError: if the checkpoint's tensors do not match the config (named), or its
            files are missing or truncated.
        ConfigError: if the folder stores its weights in the legacy ``pytorch_model.bin``.
    """
    from accelerate import init_empty_weights  # noqa: PLC0415
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    folder = Path(folder)
    check_no_custom_code(folder)
    config = read_model_config(folder)
    check_causal_lm(config, f"'{folder / CONFIG_FILE}'")
    if family_for_model_type(config.model_type).experts is not None:
        raise ConfigError(f"--offload does not stream mixtures of experts yet ('{config.model_type}'); compress it "
                          "in memory (--no-offload)")
    weights = check_weights(folder)
    if not weights:
        raise ConfigError(f"--offload reads safetensors files, and '{folder}' has pytorch_model.bin; convert it "
                          "with save_pretrained(safe_serialization=True) or leave out --offload")
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    model.eval()
    files = _checkpoint_index(weights, model, folder)
    return LazyModel(model, load_tokenizer(folder), source, files, dtype, device)


def _headers(weights: list[Path]):
    """``(file, tensor name, header entry)`` of every tensor in the safetensors ``weights``."""
    for file in weights:
        with file.open("rb") as handle:  # the header only
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                yield file, name, info


def checkpoint_bytes(folder: Path, dtype: torch.dtype) -> int:
    """Bytes the checkpoint in ``folder`` takes in memory with its floats in ``dtype`` (0 when
    it has no safetensors files)."""
    try:
        weights = check_weights(Path(folder))
    except NetslimError:
        return 0
    size = torch.empty((), dtype=dtype).element_size()
    return sum(math.prod(info["shape"]) * size for _, _, info in _headers(weights))


def _checkpoint_index(weights: list[Path], model: nn.Module, folder: Path) -> dict[str, Path]:
    """Tensor name -> file, for the tensors the model holds; checked against their shapes."""
    shapes: dict[str, tuple[list[int], Path]] = {}
    for file, name, info in _headers(weights):
        if info.get("dtype") not in _READABLE:
            raise ModelFileError(f"'{file}' stores '{name}' as {info.get('dtype')}, which --offload cannot "
                                 "read; leave out --offload")
        shapes[name] = (info["shape"], file)
    expected = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [n for n in expected if n not in shapes and not (tied and n.endswith("lm_head.weight"))]
    extra = [n for n in shapes if n not in expected]
    wrong = [n for n, t in expected.items() if n in shapes and list(t.shape) != list(shapes[n][0])]
    for what, names in (("missing", missing), ("not in the config", extra), ("of another shape", wrong)):
        if names:
            raise ModelFileError(f"the weights of '{folder}' do not fit its config.json for --offload: "
                                 f"{len(names)} tensors {what}, e.g. {sorted(names)[0]}; leave out --offload "
                                 "or re-save the model with save_pretrained")
    return {name: file for name, (_, file) in shapes.items()}
