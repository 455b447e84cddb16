"""Where text comes from: a local file, or WikiText-2 (local copy first, the hub when online).

A source is named by a string: a path to a text file, or ``wikitext2`` / ``wikitext2:test`` /
``wikitext2:valid``. WikiText-2 is looked up in this order: the folder in the
``NETSLIM_WIKITEXT2`` environment variable, a ``shared/data/wikitext-2`` or
``data/wikitext-2`` folder beside the current directory or one of its parents, then the
Hugging Face dataset ``wikitext-2-raw-v1`` (needs the ``datasets`` package and a network).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from netslim.errors import DataNotFoundError

WIKITEXT2 = "wikitext2"
_SPLITS = {"test": "test", "valid": "validation", "validation": "validation", "train": "train"}
_LOCAL_NAMES = {"test": "test.txt", "validation": "valid.txt", "train": "train.txt"}


@dataclass(frozen=True)
class TextSource:
    """A resolved text: its content and where it came from (for reports)."""

    name: str
    text: str


def resolve_text(source: str | os.PathLike, default_split: str = "test") -> TextSource:
    """Resolve a source string to text.

    Args:
        source: A text file path, or ``wikitext2[:split]``.
        default_split: Split used when ``wikitext2`` names none.

    Raises:
        DataNotFoundError: if the file or dataset cannot be found.
    """
    spec = str(source)
    if spec == WIKITEXT2 or spec.startswith(WIKITEXT2 + ":"):
        split = spec.split(":", 1)[1] if ":" in spec else default_split
        return _wikitext2(split)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataNotFoundError(
            f"text file '{spec}' not found; pass an existing .txt file or 'wikitext2[:test|valid]'"
        )
    return TextSource(name=str(path), text=path.read_text(encoding="utf-8", errors="replace"))


def _wikitext2(split: str) -> TextSource:
    if split not in _SPLITS:
        raise DataNotFoundError(f"unknown WikiText-2 split '{split}'; use test, valid or train")
    hf_split = _SPLITS[split]
    folder = _local_wikitext2_folder()
    if folder is not None and (folder / _LOCAL_NAMES[hf_split]).is_file():
        path = folder / _LOCAL_NAMES[hf_split]
        return TextSource(name=f"wikitext2:{split} ({path})", text=path.read_text(encoding="utf-8"))
    return _wikitext2_from_hub(hf_split)


def _local_wikitext2_folder() -> Path | None:
    env = os.environ.get("NETSLIM_WIKITEXT2")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        for candidate in (folder / "shared/data/wikitext-2", folder / "data/wikitext-2"):
            if candidate.is_dir():
                return candidate
    return None


def _wikitext2_from_hub(split: str) -> TextSource:
    try:
        import datasets  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise DataNotFoundError(
            "WikiText-2 not found locally; set NETSLIM_WIKITEXT2 to a folder holding "
            "test.txt/valid.txt, or `pip install datasets` to fetch it from the hub"
        ) from None
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as exc:  # the hub raises many types when offline
        raise DataNotFoundError(
            f"could not fetch WikiText-2 from the hub ({type(exc).__name__}); set "
            "NETSLIM_WIKITEXT2 to a local folder holding test.txt/valid.txt"
        ) from None
    return TextSource(name=f"wikitext2:{split} (hub wikitext-2-raw-v1)", text="\n\n".join(rows["text"]))
