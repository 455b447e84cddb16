"""Output folders that never put the user's files at risk.

Every folder netslim writes is built in a temporary sibling (``.<name>.tmp-XXXX``) and renamed
into place only when complete, so a failed or killed run leaves no half-written output. The
finished folder holds an ownership file, :data:`OWNER_FILE`, listing what netslim wrote there.
An existing folder is replaced only when asked (``overwrite``), only if netslim wrote it, and
only if it holds nothing else; an output that equals, contains or lies inside one of the
job's inputs is refused. Temporary folders of a killed run (their process is gone) are
removed the next time the same output is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from netslim.errors import ConfigError, OutputExistsError

OWNER_FILE = ".netslim"  # in every finished folder: who wrote it and which entries are its own
PARTIAL_FILE = ".netslim-partial"  # in every temporary folder: the pid of the process writing it
LEGACY_MARKERS = ("netslim.json",)  # folders of earlier versions, which had no OWNER_FILE


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Fail unless a folder could be created at ``folder`` (tries a probe in its nearest existing ancestor).

    Raises:
        ConfigError: naming ``what`` (e.g. ``"--out"``) and the folder that refuses writes.
    """
    base = _nearest_existing(Path(folder).expanduser().absolute())
    if not base.is_dir():
        raise ConfigError(f"{what} '{folder}': '{base}' is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".netslim-probe-", dir=base)
    except OSError as exc:
        raise ConfigError(f"{what} '{folder}': cannot write in '{base}' ({exc.strerror}); choose a writable folder") from None
    os.rmdir(probe)


def _owned_entries(folder: Path) -> set[str] | None:
    """The entries netslim recorded writing in ``folder``; ``None`` if netslim did not write it."""
    owner = folder / OWNER_FILE
    if owner.is_file():
        try:
            entries = json.loads(owner.read_text(encoding="utf-8"))["entries"]
            return {str(e) for e in entries} | {OWNER_FILE}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            return None
    if any((folder / m).is_file() for m in LEGACY_MARKERS):
        return {p.name for p in folder.iterdir()}  # an earlier netslim's output: all of it is ours
    return None


def check_output(path: str | os.PathLike, overwrite: bool, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Fail early, before any work, if ``path`` may not be written.

    Args:
        path: The output folder.
        overwrite: Whether an existing folder written by netslim may be replaced.
        inputs: The job's inputs (model folder or file, text files, recipe); the output may
            not equal, contain or lie inside any of them.

    Raises:
        OutputExistsError: if the folder exists and may not be replaced, saying why.
        ConfigError: if the output clashes with an input or cannot be written.
    """
    target = Path(path).expanduser().absolute()
    resolved = target.resolve()
    for source in inputs:
        src = Path(source).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if _inside(resolved, src) or _inside(src, resolved):
            relation = "is" if resolved == src else "lies inside" if _inside(resolved, src) else "contains"
            raise ConfigError(f"output '{path}' {relation} the input '{source}'; choose an output folder outside it")
    if _inside(Path.cwd().resolve(), resolved):
        raise ConfigError(f"output '{path}' is the current folder or one above it; name a new folder, e.g. --out slim/")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output '{path}' already exists; choose another --out or pass --overwrite")
        if target.is_symlink() or not target.is_dir():
            raise OutputExistsError(f"output '{path}' exists and is not a folder; choose another --out")
        owned = _owned_entries(target)
        if owned is None and any(target.iterdir()):
            raise OutputExistsError(f"output '{path}' was not written by netslim; --overwrite replaces only "
                                    "netslim's own output folders, choose another --out")
        foreign = sorted(p.name for p in target.iterdir() if owned is not None and p.name not in owned)
        if foreign:
            raise OutputExistsError(f"output '{path}' holds files netslim did not write ({', '.join(foreign[:3])}); "
                                    "move them or choose another --out")
    check_writable(target, "output")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(parent: Path, prefix: str) -> None:
    """Remove temporary folders ``parent/prefix*`` left by a netslim process that no longer runs.

    Only folders holding :data:`PARTIAL_FILE` (so netslim made them) are touched.
    """
    if not parent.is_dir():
        return
    for folder in parent.glob(f"{prefix}*"):
        marker = folder / PARTIAL_FILE
        try:
            pid = int(json.loads(marker.read_text(encoding="utf-8"))["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(folder, ignore_errors=True)


def partial_folder(parent: Path, prefix: str) -> Path:
    """A new temporary folder ``parent/prefix*`` marked as netslim's work in progress."""
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (folder / PARTIAL_FILE).write_text(json.dumps({"pid": os.getpid()}), encoding="utf-8")
    return folder


def finish_folder(folder: Path) -> None:
    """Turn a :func:`partial_folder` into a finished one: ownership file, ordinary permissions."""
    (folder / PARTIAL_FILE).unlink(missing_ok=True)
    entries = sorted(p.name for p in folder.iterdir())
    (folder / OWNER_FILE).write_text(json.dumps({"written_by": "netslim", "entries": entries}), encoding="utf-8")
    folder.chmod(0o777 & ~_umask())  # mkdtemp makes 0700 folders; outputs are ordinary folders


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only if the block finishes.

    ``path`` is checked by :func:`check_output` (``inputs`` are protected). On an exception
    (or a kill) ``path`` is left as it was; the temporary folder is removed at once, or by
    the next run that writes ``path``.
    """
    inputs = list(inputs)
    target = check_output(path, overwrite, inputs)
    prefix = f".{target.name}.tmp-"
    clean_stale(target.parent, f".{target.name}.")
    tmp = partial_folder(target.parent, prefix)
    try:
        yield tmp
        finish_folder(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        check_output(path, overwrite, inputs)  # still netslim's own, and nothing added meanwhile
        old = partial_folder(target.parent, f".{target.name}.old-")
        os.replace(target, old / target.name)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json_file(path: str | os.PathLike, data: dict, overwrite: bool, owner_key: str) -> Path:
    """Write ``data`` as the JSON file ``path``, atomically (a temporary sibling renamed into place).

    An existing file is replaced only with ``overwrite`` and only if it is a JSON object holding
    ``owner_key`` (netslim wrote it); ``data`` must hold that key too.

    Raises:
        ConfigError: a folder at ``path``, or an unwritable folder.
        OutputExistsError: the file exists and may not be replaced, saying why.
    """
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise ConfigError(f"--out '{path}' is a folder; name a .json file")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"'{path}' already exists; choose another --out or pass --overwrite")
        try:
            ours = not target.is_symlink() and owner_key in json.loads(target.read_text())
        except (OSError, ValueError, TypeError):
            ours = False
        if not ours:
            raise OutputExistsError(f"'{path}' was not written by netslim; --overwrite replaces only netslim's "
                                    "own results, choose another --out")
    check_writable(target.parent, "--out")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target
