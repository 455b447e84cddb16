"""Token windows and text sources."""

import pytest
import torch

from netslim.data.sources import resolve_text
from netslim.data.windows import calibration_windows, evaluation_windows
from netslim.errors import ConfigError, DataNotFoundError


def test_evaluation_windows_are_consecutive_and_non_overlapping():
    ids = torch.arange(1000)
    w = evaluation_windows(ids, seqlen=100, max_windows=5)
    assert w.ids.shape == (5, 100)
    assert torch.equal(w.ids.flatten(), ids[:500])
    assert len(evaluation_windows(ids, seqlen=100).ids) == 10  # the tail is dropped


def test_bos_windows_start_with_bos_and_keep_seqlen():
    w = evaluation_windows(torch.arange(10, 1000), seqlen=50, max_windows=3, bos_id=1)
    assert w.ids.shape == (3, 50) and (w.ids[:, 0] == 1).all()
    assert torch.equal(w.ids[:, 1:].flatten(), torch.arange(10, 10 + 147))
    assert w.describe()["bos"] is True


def test_calibration_windows_are_seeded():
    ids = torch.arange(5000)
    a = calibration_windows(ids, 64, 8, seed=3)
    b = calibration_windows(ids, 64, 8, seed=3)
    c = calibration_windows(ids, 64, 8, seed=4)
    assert torch.equal(a.ids, b.ids) and not torch.equal(a.ids, c.ids)
    assert ((a.ids[:, 1:] - a.ids[:, :-1]) == 1).all()  # contiguous slices of the text
    assert a.describe() == {"source": "text", "seqlen": 64, "seed": 3, "bos": False, "windows": 8}


def test_too_short_text_and_bad_sizes():
    with pytest.raises(ConfigError, match="shorter than one window"):
        evaluation_windows(torch.arange(10), seqlen=64)
    with pytest.raises(ConfigError, match="shorter than one window"):
        calibration_windows(torch.arange(10), 64, 4)
    with pytest.raises(ConfigError, match="seqlen=1"):
        evaluation_windows(torch.arange(10), seqlen=1)


def test_text_sources(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert resolve_text(f).text == "hello world"
    with pytest.raises(DataNotFoundError, match="not found"):
        resolve_text(tmp_path / "nope.txt")
    with pytest.raises(DataNotFoundError, match="split"):
        resolve_text("wikitext2:dev")


def test_local_wikitext2_is_found_by_env(tmp_path, monkeypatch):
    (tmp_path / "valid.txt").write_text("valid text")
    (tmp_path / "test.txt").write_text("test text")
    monkeypatch.setenv("NETSLIM_WIKITEXT2", str(tmp_path))
    assert resolve_text("wikitext2:valid").text == "valid text"
    assert resolve_text("wikitext2").text == "test text"
