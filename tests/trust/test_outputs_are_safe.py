"""Issue 12, item 2: the input and the user's files are never at risk from --out / --overwrite."""

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from netslim.errors import ConfigError, NetslimError, OutputExistsError
from netslim.export.atomic import OWNER_FILE, PARTIAL_FILE, atomic_folder, check_output
from netslim.job import Protocol, compress_job
from tiny_models import eval_text_beside

PROTO = dict(seqlen=32, calib_windows=2, eval_windows=2, seed=0)
RECIPE = [{"method": "magnitude", "ratio": 0.5}]


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def project(tiny_folder, tmp_path):
    """proj/llama (the input), proj/notes.txt (a neighbouring user file), proj/text.txt."""
    folder, text = tiny_folder
    proj = tmp_path / "proj"
    proj.mkdir()
    os.replace(folder, proj / "llama")
    (proj / "notes.txt").write_text("my notes")
    os.replace(text, proj / "text.txt")
    eval_text_beside(proj / "text.txt")
    return proj


def _job(proj, out, overwrite=False):
    text = str(proj / "text.txt")
    return compress_job(str(proj / "llama"), RECIPE, out, Protocol(calib=text, eval=str(proj / "eval.txt"), **PROTO),
                        overwrite=overwrite, progress=False)


@pytest.mark.parametrize("where", ["proj", "proj/llama", "proj/llama/slim", "proj/text.txt", "."])
@pytest.mark.parametrize("overwrite", [False, True])
def test_no_output_touches_the_input_or_its_neighbours(project, where, overwrite, monkeypatch):
    monkeypatch.chdir(project.parent)
    before = _tree(project.parent)
    with pytest.raises(NetslimError) as err:
        _job(project, where, overwrite)
    assert "\n" not in str(err.value)
    assert _tree(project.parent) == before
    assert not [p for p in project.parent.rglob(".*tmp-*")]  # no hidden copies left either


def test_overwrite_replaces_only_netslims_own_folders(project, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputExistsError, match="not written by netslim"):
        _job(project, foreign, overwrite=True)
    assert (foreign / "thesis.tex").read_text() == "years of work"

    out = tmp_path / "out"
    _job(project, out)
    assert (out / OWNER_FILE).is_file()
    (out / "my-results.csv").write_text("keep me")  # the user adds a file to netslim's folder
    with pytest.raises(OutputExistsError, match="my-results.csv"):
        _job(project, out, overwrite=True)
    (out / "my-results.csv").unlink()
    first = (out / "model.safetensors").stat().st_mtime_ns
    _job(project, out, overwrite=True)  # netslim's own folder, nothing else in it: replaced
    assert (out / "model.safetensors").stat().st_mtime_ns != first


def test_output_folders_have_ordinary_permissions(project, tmp_path):
    out = tmp_path / "out"
    _job(project, out)
    mask = os.umask(0)
    os.umask(mask)
    assert (out.stat().st_mode & 0o777) == 0o777 & ~mask


def test_unwritable_output_fails_before_any_work(project, tmp_path, monkeypatch):
    import netslim.job

    def never(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(netslim.job, "load_model", never)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        _job(project, blocker / "out")
    with pytest.raises(ConfigError, match="cannot write"):
        _job(project, "/proc/netslim-out")


def test_killed_run_leaves_temporaries_that_the_next_run_removes(tmp_path):
    """A process killed while writing leaves its temporary folder; the next write cleans it."""
    out = tmp_path / "out"
    script = (
        "import time\n"
        "from netslim.export.atomic import atomic_folder\n"
        f"with atomic_folder({str(out)!r}) as tmp:\n"
        "    (tmp / 'big.bin').write_bytes(b'0' * 1000)\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp / PARTIAL_FILE).is_file() and not out.exists()
    alive = tmp_path / ".out.tmp-alive"  # a folder of a process that still runs is left alone
    alive.mkdir()
    (alive / PARTIAL_FILE).write_text(f'{{"pid": {os.getppid()}}}')
    user = tmp_path / ".out.tmp-mine"  # a user folder of the same shape, without netslim's marker
    user.mkdir()
    with atomic_folder(out) as new:
        (new / "x").write_text("x")
    assert not tmp.exists() and alive.exists() and user.exists()
    assert (out / "x").read_text() == "x"


def test_check_output_names_the_clash(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ConfigError, match="lies inside the input"):
        check_output(tmp_path / "in" / "o", False, inputs=[tmp_path / "in"])
    with pytest.raises(ConfigError, match="contains the input"):
        check_output(tmp_path, True, inputs=[tmp_path / "in"])
    with pytest.raises(ConfigError, match=r"is the input"):
        check_output(tmp_path / "in", True, inputs=[tmp_path / "in"])
