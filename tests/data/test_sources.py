"""Text sources: the packaged WikiText-2, the hub's raw release, and strict UTF-8 files."""

from __future__ import annotations

import gzip
import hashlib
import sys
import types
from importlib import resources

import pytest

from netslim.data.sources import packaged_wikitext2, resolve_text
from netslim.errors import DataNotFoundError

# The word-level release of pytorch/examples (commit 77f55b9), the text the benchmark figures use.
PACKAGED = {
    "test": ("d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449, 1_255_018),
    "valid": ("f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681, 1_120_192),
}


@pytest.fixture(autouse=True)
def _no_override(monkeypatch, tmp_path):
    monkeypatch.delenv("NETSLIM_WIKITEXT2", raising=False)
    monkeypatch.chdir(tmp_path)


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("split", sorted(PACKAGED))
def test_packaged_wikitext2_is_the_word_level_release_byte_for_byte(split):
    sha, n_bytes, n_chars = PACKAGED[split]
    data = gzip.decompress(resources.files("netslim.data").joinpath("wikitext2", f"{split}.txt.gz").read_bytes())
    assert len(data) == n_bytes and hashlib.sha256(data).hexdigest() == sha
    text = resolve_text(f"wikitext2:{split}").text
    assert text == data.decode("utf-8") == packaged_wikitext2(split) and len(text) == n_chars
    assert text.startswith(" \n = ") and " <unk> " in text and " @-@ " in text


def test_packaged_copy_is_the_default_and_named_in_reports():
    assert resolve_text("wikitext2").name == "wikitext2:test (packaged word-level release)"
    assert resolve_text("wikitext2:validation").name == "wikitext2:valid (packaged word-level release)"
    assert resolve_text("wikitext2", default_split="valid").text == packaged_wikitext2("valid")


def test_the_licence_note_ships_beside_the_data():
    note = resources.files("netslim.data").joinpath("wikitext2", "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in note and "Merity" in note and "word-level" in note and "Wikipedia" in note


def test_no_folder_among_the_parents_is_searched(tmp_path, monkeypatch):
    for folder in ("shared/data/wikitext-2", "data/wikitext-2"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "test.txt").write_text("a decoy that must not be read")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert resolve_text("wikitext2:test").text == packaged_wikitext2("test")


def test_the_environment_variable_overrides_the_packaged_copy(tmp_path, monkeypatch):
    (tmp_path / "test.txt").write_text("override text")
    (tmp_path / "train.txt").write_text("train text")
    monkeypatch.setenv("NETSLIM_WIKITEXT2", str(tmp_path))
    source = resolve_text("wikitext2:test")
    assert source.text == "override text" and str(tmp_path) in source.name
    assert resolve_text("wikitext2:train").text == "train text"
    with pytest.raises(DataNotFoundError, match="NETSLIM_WIKITEXT2 .* no valid.txt") as info:
        resolve_text("wikitext2:valid")
    _one_line(info)


def test_train_is_not_shipped():
    with pytest.raises(DataNotFoundError, match="wikitext2:train is not shipped.*wikitext2-raw:train") as info:
        resolve_text("wikitext2:train")
    _one_line(info)


def test_unknown_splits_name_the_choices():
    with pytest.raises(DataNotFoundError, match="split 'dev'.*use test or valid$") as info:
        resolve_text("wikitext2:dev")
    _one_line(info)
    with pytest.raises(DataNotFoundError, match="use test, valid or train$"):
        resolve_text("wikitext2-raw:dev")


def test_raw_release_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(DataNotFoundError, match="wikitext2-raw:test .*pip install 'netslim\\[hub\\]'") as info:
        resolve_text("wikitext2-raw")
    _one_line(info)


def test_raw_release_comes_from_the_hub(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return {"text": ["first", "second"]}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    source = resolve_text("wikitext2-raw:valid")
    assert calls == [("wikitext", "wikitext-2-raw-v1", "validation")]
    assert source.text == "first\n\nsecond" and source.name == "wikitext2-raw:valid (hub wikitext-2-raw-v1)"


def test_raw_release_offline_is_one_line(monkeypatch):
    def load_dataset(*args, **kwargs):
        raise ConnectionError("no network\nat all")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(DataNotFoundError, match="could not fetch wikitext-2-raw-v1.*ConnectionError") as info:
        resolve_text("wikitext2-raw:train")
    _one_line(info)


def test_non_utf8_file_names_the_file_and_the_offset(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(DataNotFoundError, match="latin1.txt' is not UTF-8: byte 0xe9 at offset 3 .*convert") as info:
        resolve_text(f)
    _one_line(info)


def test_utf8_bom_is_dropped_and_newlines_normalized(tmp_path):
    f = tmp_path / "bom.txt"
    f.write_bytes(b"\xef\xbb\xbfcaf\xc3\xa9\r\nnext\rline")
    assert resolve_text(f).text == "caf\u00e9\nnext\nline"
    f.write_bytes(b"\xef\xbb\xbfok\xff")  # the offset counts the BOM's bytes
    with pytest.raises(DataNotFoundError, match="byte 0xff at offset 5"):
        resolve_text(f)


@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n ", b"\xef\xbb\xbf\n"])
def test_empty_or_blank_file_is_one_line(tmp_path, content):
    f = tmp_path / "blank.txt"
    f.write_bytes(content)
    with pytest.raises(DataNotFoundError, match="blank.txt' is empty or holds only whitespace") as info:
        resolve_text(f)
    _one_line(info)


def test_env_override_files_are_read_strictly_too(tmp_path, monkeypatch):
    (tmp_path / "test.txt").write_bytes(b"\x80abc")
    monkeypatch.setenv("NETSLIM_WIKITEXT2", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="test.txt' is not UTF-8: byte 0x80 at offset 0"):
        resolve_text("wikitext2:test")


def test_missing_file_lists_the_spellings(tmp_path):
    with pytest.raises(DataNotFoundError, match="not found; pass a .txt file, 'wikitext2.*'wikitext2-raw") as info:
        resolve_text(tmp_path / "nope.txt")
    _one_line(info)
