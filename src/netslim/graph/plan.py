"""A replayable record of cuts, stored as JSON next to safetensors weights (no pickling).

Example:
    >>> result = prune_channels(model, inputs, ChannelPruneConfig(ratio=0.5, measure="macs"))
    >>> save_pruned(result.model, result.plan, "slim/")
    >>> fresh = MyNet()                       # the architecture, built as usual
    >>> model = load_pruned(fresh, "slim/")   # cuts replayed, then the weights loaded
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from safetensors.torch import load_model, save_model
from torch import nn

from netslim import __version__
from netslim.errors import NetslimError
from netslim.export.atomic import atomic_folder
from netslim.graph.pruners import cut

PLAN_FILE = "slim_plan.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class Cut:
    """One side of one module cut down to ``keep`` (indices into its ``size`` channels)."""

    module: str
    side: str
    keep: tuple[int, ...]
    size: int


@dataclass
class SlimPlan:
    """The ordered cuts that turn the original model into the pruned one."""

    cuts: list[Cut] = field(default_factory=list)

    def to_json(self) -> str:
        """JSON text with a format version."""
        return json.dumps({"format": 1, "netslim_version": __version__, "cuts": [asdict(c) for c in self.cuts]})

    @classmethod
    def from_json(cls, text: str) -> SlimPlan:
        """Parse :meth:`to_json` output.

        Raises:
            NetslimError: if the text is not a plan of a known format.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != 1:
            raise NetslimError("not a netslim slim plan of format 1; upgrade netslim or check the file")
        return cls([Cut(c["module"], c["side"], tuple(c["keep"]), int(c["size"])) for c in data["cuts"]])

    def apply(self, model: nn.Module) -> nn.Module:
        """Replay the cuts on ``model`` (in place) and return it.

        Raises:
            NetslimError: if a module is missing or has a different size than when planned.
        """
        modules = dict(model.named_modules())
        for c in self.cuts:
            if c.module not in modules:
                raise NetslimError(f"the plan cuts '{c.module}', which this model does not have")
            cut(modules[c.module], c.side, list(c.keep), c.module)
        return model


def save_pruned(model: nn.Module, plan: SlimPlan, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``plan`` and ``model``'s weights to folder ``path`` atomically."""
    with atomic_folder(path, overwrite) as tmp:
        write_pruned(tmp, model, plan)
    return Path(path)


def write_pruned(folder: Path, model: nn.Module, plan: SlimPlan) -> None:
    """The files of a pruned model in ``folder``: the plan (``slim_plan.json``) and the weights
    (``model.safetensors``); :func:`save_pruned` and :func:`netslim.save` both write them."""
    (folder / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
    save_model(model, str(folder / WEIGHTS_FILE))


def load_pruned(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Replay the saved plan on a freshly built ``model`` and load the saved weights."""
    folder = Path(path)
    if not (folder / PLAN_FILE).is_file():
        raise NetslimError(f"'{folder}' has no {PLAN_FILE}; it was not written by save_pruned")
    SlimPlan.from_json((folder / PLAN_FILE).read_text(encoding="utf-8")).apply(model)
    try:
        load_model(model, str(folder / WEIGHTS_FILE), strict=True)
    except RuntimeError as exc:
        raise NetslimError(f"'{folder}' does not match the model: {str(exc).splitlines()[0]}") from None
    return model
