"""Writing a packed output folder one decoder block at a time (``--offload``).

Each block is written to its own file (``netslim-00001.safetensors``, ...) as soon as it is
compressed, with the codecs and value dtypes :func:`netslim.save` would choose, and its values
rounded in place to what is stored, so that what is measured next is what the folder holds.
The tensors outside the blocks (embeddings, final norm, head) go to ``netslim-rest.safetensors``
at the end. :func:`netslim.load` reads the folder like any packed one.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from netslim.export.modules import module_specs
from netslim.export.save import SavedResult, finish_folder, packed_storage, reference_model, write_configs
from netslim.export.storage import declared_widths, plan_codecs, round_values, unique_state, value_dtypes, write_packed
from netslim.models.adapter import ModelAdapter

REST_FILE = "netslim-rest.safetensors"


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

    def finish(self, result: SavedResult) -> None:
        """Write the tensors outside the blocks, the configs, the tokenizer, the marker and the report.

        Every block must have been written and unloaded first."""
        prefix = f"{self.adapter.spec.layers}."
        aliases = self._write(lambda name: not name.startswith(prefix), REST_FILE)
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
