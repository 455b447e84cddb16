"""A causal LM whose decoder blocks are read from their safetensors files one at a time.

:func:`open_lazy` builds the model from its config with every parameter on the meta device
(accelerate's ``init_empty_weights``: no memory; the buffers the config computes, such as
rotary frequencies, are real). :meth:`LazyModel.load_block` reads one block's tensors from the
checkpoint onto the compute device in the compute dtype; :meth:`LazyModel.unload_block` puts
them back on the meta device, so that a pass over the blocks holds one block at a time. The
tensors outside the blocks (token embeddings, final norm, head) are read and freed the same
way (:meth:`LazyModel.load_outside`), only while they are needed.

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
from netslim.models.folder import (
    CONFIG_FILE,
    check_causal_lm,
    check_no_custom_code,
    check_weights,
    load_tokenizer,
    read_model_config,
)

_READABLE = ("F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL")  # safetensors dtypes read here


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

    def __post_init__(self) -> None:
        self.adapter = ModelAdapter.from_model(self.model)

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

    def load_outside(self) -> None:
        """Read the tensors outside the blocks (embeddings, final norm, head) onto the device."""
        prefix = f"{self.adapter.spec.layers}."
        self._read([name for name in self.files if not name.startswith(prefix)])
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()

    def unload_outside(self) -> None:
        """Put the tensors outside the blocks that the checkpoint holds back on the meta device
        (buffers the config computes, such as Gemma's embedding scale, stay)."""
        from accelerate.utils import set_module_tensor_to_device  # noqa: PLC0415

        prefix = f"{self.adapter.spec.layers}."
        for name in self.files:
            if not name.startswith(prefix):
                set_module_tensor_to_device(self.model, name, "meta")
        if getattr(self.model.config, "tie_word_embeddings", False):
            self.model.tie_weights()  # the head shares the embedding: now the meta one

    def _read(self, names: list[str]) -> None:
        from accelerate.utils import set_module_tensor_to_device  # noqa: PLC0415

        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for file, group in by_file.items():
            with safe_open(file, framework="pt", device="cpu") as handle:
                for name in group:
                    tensor = handle.get_tensor(name)
                    if tensor.is_floating_point():
                        tensor = tensor.to(self.dtype)
                    set_module_tensor_to_device(self.model, name, self.device, value=tensor)


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
