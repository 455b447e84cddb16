"""Atomic output folders: write into a temporary sibling, then rename into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from netslim.errors import OutputExistsError


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early if ``path`` exists and may not be replaced.

    Raises:
        OutputExistsError: saying to pass ``--overwrite`` or choose another folder.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"output '{target}' already exists; choose another --out or pass --overwrite")
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"output '{target}' exists and is not a folder")
    return target


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block finishes.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    target = check_output(path, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
