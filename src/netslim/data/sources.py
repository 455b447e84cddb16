"""Where text comes from: a local file, the WikiText-2 copy shipped with netslim, or the hub.

A source is named by a string:

    path/to/file.txt        a UTF-8 text file (a UTF-8 byte-order mark is dropped)
    wikitext2[:test|valid]  WikiText-2, the word-level tokenized release ("wikitext-2-v1":
                            ``<unk>`` for rare words, numbers split as ``@-@ @,@ @.@``),
                            read from the copy packaged in ``netslim/data/wikitext2``
                            (CC BY-SA 3.0, Merity et al. 2016; see the README there). The
                            train split is not shipped.
    wikitext2-raw[:split]   the raw release ``wikitext-2-raw-v1`` from the Hugging Face hub
                            (test, valid or train; needs the ``datasets`` package and a network)
    enwiki-sample           the 106 English Wikipedia articles (about 480k words) of the
                            shortened dump in the ``gensim`` package's test data, wiki markup
                            removed by gensim's own parser (needs ``pip install gensim``); real
                            text for recovery and calibration that is not WikiText-2

The environment variable ``NETSLIM_WIKITEXT2`` overrides the packaged copy: a folder holding
``test.txt`` / ``valid.txt`` (and ``train.txt`` for ``wikitext2:train``). No other place is
searched: the packaged copy keeps the evaluation the same on every machine.

Example:
    >>> resolve_text("wikitext2:test").name
    'wikitext2:test (packaged word-level release)'
"""

from __future__ import annotations

import codecs
import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from netslim.errors import DataNotFoundError

WIKITEXT2 = "wikitext2"
WIKITEXT2_RAW = "wikitext2-raw"
_SPLITS = {"test": "test", "valid": "valid", "validation": "valid", "train": "train"}
_LOCAL_NAMES = {"test": "test.txt", "valid": "valid.txt", "train": "train.txt"}
_PACKAGED = {"test": "test.txt.gz", "valid": "valid.txt.gz"}
_HUB_SPLITS = {"test": "test", "valid": "validation", "train": "train"}
ENWIKI_SAMPLE = "enwiki-sample"
_ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_SPELLINGS = "a .txt file, 'wikitext2[:test|valid]', 'wikitext2-raw[:test|valid|train]' or 'enwiki-sample'"


@dataclass(frozen=True)
class TextSource:
    """A resolved text: its content and where it came from (for reports)."""

    name: str
    text: str


def resolve_text(source: str | os.PathLike, default_split: str = "test") -> TextSource:
    """Resolve a source string to text.

    Args:
        source: A UTF-8 text file path, ``wikitext2[:split]`` or ``wikitext2-raw[:split]``.
        default_split: Split used when the WikiText-2 name gives none.

    Raises:
        DataNotFoundError: if the file or dataset cannot be found, the file is not UTF-8
            or holds no text, or the split is not available.
    """
    spec = str(source)
    if spec == ENWIKI_SAMPLE:
        return _enwiki_sample()
    for dataset in (WIKITEXT2_RAW, WIKITEXT2):
        if spec == dataset or spec.startswith(dataset + ":"):
            split = spec.split(":", 1)[1] if ":" in spec else default_split
            return _wikitext2(split) if dataset == WIKITEXT2 else _wikitext2_raw(split)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataNotFoundError(f"text file '{spec}' not found; pass {_SPELLINGS}")
    return TextSource(name=str(path), text=read_text_file(path))


def read_text_file(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file (newlines normalized to ``\\n``, a leading BOM dropped).

    Raises:
        DataNotFoundError: if the file cannot be read, is not valid UTF-8 (naming the byte
            offset) or holds only whitespace.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataNotFoundError(f"cannot read text file '{path}' ({exc.strerror or type(exc).__name__})") from None
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        text = data[skip:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = skip + exc.start
        raise DataNotFoundError(
            f"text file '{path}' is not UTF-8: byte 0x{data[offset]:02x} at offset {offset} is invalid; "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    if not text.strip():
        raise DataNotFoundError(f"text file '{path}' is empty or holds only whitespace; pass a file with text")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # what text-mode reading did before


def _split(dataset: str, split: str) -> str:
    if split not in _SPLITS:
        allowed = "test, valid or train" if dataset == WIKITEXT2_RAW else "test or valid"
        raise DataNotFoundError(f"unknown WikiText-2 split '{split}' in '{dataset}:{split}'; use {allowed}")
    return _SPLITS[split]


def _wikitext2(split: str) -> TextSource:
    split = _split(WIKITEXT2, split)
    env = os.environ.get("NETSLIM_WIKITEXT2")
    if env:
        path = Path(env).expanduser() / _LOCAL_NAMES[split]
        if not path.is_file():
            raise DataNotFoundError(
                f"NETSLIM_WIKITEXT2 is set to '{env}', which holds no {_LOCAL_NAMES[split]}; put the file "
                "there or unset NETSLIM_WIKITEXT2 to use the packaged copy"
            )
        return TextSource(name=f"wikitext2:{split} ({path})", text=read_text_file(path))
    if split not in _PACKAGED:
        raise DataNotFoundError(
            "wikitext2:train is not shipped with netslim (only test and valid are); use wikitext2-raw:train "
            "(needs `pip install datasets` and a network) or a .txt file"
        )
    return TextSource(name=f"wikitext2:{split} (packaged word-level release)", text=packaged_wikitext2(split))


def packaged_wikitext2(split: str) -> str:
    """The WikiText-2 ``test`` or ``valid`` split shipped with netslim (word-level release).

    Raises:
        DataNotFoundError: if the split is not shipped or the install lacks the data file.
    """
    if split not in _PACKAGED:
        raise DataNotFoundError(f"netslim ships the WikiText-2 splits {sorted(_PACKAGED)}, not '{split}'")
    resource = resources.files("netslim.data").joinpath("wikitext2", _PACKAGED[split])
    try:
        return gzip.decompress(resource.read_bytes()).decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # a broken or partial install
        raise DataNotFoundError(
            f"the packaged WikiText-2 file {_PACKAGED[split]} is missing or damaged ({type(exc).__name__}); "
            "reinstall netslim, or set NETSLIM_WIKITEXT2 to a folder holding test.txt/valid.txt"
        ) from None


def _wikitext2_raw(split: str) -> TextSource:
    split = _split(WIKITEXT2_RAW, split)
    try:
        import datasets  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise DataNotFoundError(
            f"wikitext2-raw:{split} is fetched from the Hugging Face hub and needs the datasets package "
            "(pip install 'netslim[hub]') and a network; wikitext2:test|valid is shipped with netslim"
        ) from None
    try:
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=_HUB_SPLITS[split])
    except Exception as exc:  # the hub raises many types when offline
        raise DataNotFoundError(
            f"could not fetch wikitext-2-raw-v1 from the hub ({type(exc).__name__}); check the network, or use "
            "wikitext2:test|valid (shipped with netslim) or a .txt file"
        ) from None
    return TextSource(name=f"wikitext2-raw:{split} (hub wikitext-2-raw-v1)", text="\n\n".join(rows["text"]))


def _enwiki_sample() -> TextSource:
    """The articles of gensim's shortened English Wikipedia dump, as plain text (redirects dropped)."""
    try:
        import gensim  # noqa: PLC0415  (optional dependency)
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki  # noqa: PLC0415
    except ImportError:
        raise DataNotFoundError(f"{ENWIKI_SAMPLE} is read from the gensim package's test data: pip install gensim") from None
    path = Path(gensim.__file__).parent / "test" / "test_data" / _ENWIKI_FILE
    if not path.is_file():
        raise DataNotFoundError(f"this gensim install has no {_ENWIKI_FILE} in its test data; reinstall gensim "
                                "from its wheel, or pass a .txt file")
    import bz2  # noqa: PLC0415

    articles = []
    with bz2.open(path) as dump:
        for title, markup, _ in extract_pages(dump):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            body = " ".join(filter_wiki(markup).replace("\'\'\'", "").replace("\'\'", "").split())
            if body:
                articles.append(f"{title}\n\n{body}")
    return TextSource(name=f"{ENWIKI_SAMPLE} (gensim test data, {len(articles)} articles)", text="\n\n".join(articles))
