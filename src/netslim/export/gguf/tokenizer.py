"""The ``tokenizer.*`` keys of a GGUF file: the vocabulary, merges, special tokens, chat template.

In order of preference:

1. The model came from a GGUF file (a ``.gguf`` path, an alias such as ``smollm2-135m``, or a
   netslim output folder whose recorded source is one of those): its ``tokenizer.*`` keys are
   copied unchanged, so llama.cpp tokenizes exactly as it did for the original file.
2. A Hugging Face tokenizer: saved to a temporary folder and read with ``gguf.vocab``: a
   byte-level BPE (``tokenizer.ggml.model = gpt2``, with merges) or a Llama-style
   SentencePiece BPE (``llama``), plus special token ids and the chat template
   (``gguf.vocab.SpecialVocab``). The tokens are padded with unused ``[PADn]`` tokens up to
   the embedding's rows. The BPE pre-tokenizer name is ``qwen2`` for Qwen2 and ``default``
   otherwise (llama.cpp names pre-tokenizers by a hash of their behaviour, which this does not
   reproduce), as the summary says.
3. Otherwise (no tokenizer, or a kind GGUF has no form for, like the tests' WordLevel one):
   no ``tokenizer.*`` keys, and the summary says so; llama.cpp then needs a tokenizer from
   elsewhere.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from netslim.errors import NetslimError
from netslim.export.load import read_marker
from netslim.models.folder import NETSLIM_MARKER

_PRE_TOKENIZERS = {"qwen2": "qwen2"}


def source_gguf(source: str | None, depth: int = 0) -> Path | None:
    """The GGUF file a model was loaded from, following a netslim folder's recorded source; else ``None``."""
    if not source or depth > 3:
        return None
    from netslim.models.loading import ALIASES, _alias_gguf  # noqa: PLC0415

    if source in ALIASES:
        try:
            return _alias_gguf(source)
        except NetslimError:
            return None
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    if (path / NETSLIM_MARKER).is_file():
        try:
            return source_gguf(read_marker(path).get("source"), depth + 1)
        except NetslimError:
            return None
    return None


def copy_gguf_tokenizer(writer, path: Path, vocab_size: int) -> dict:
    """Copy the ``tokenizer.*`` keys of the GGUF file ``path``; return the summary entry."""
    import gguf  # noqa: PLC0415

    reader = gguf.GGUFReader(path)
    fields = {name: field for name, field in reader.fields.items() if name.startswith("tokenizer.")}
    tokens = fields.get(gguf.Keys.Tokenizer.LIST)
    if tokens is None:
        return {"source": None, "note": f"'{path}' has no tokenizer.ggml.tokens; no tokenizer written"}
    if len(tokens.data) != vocab_size:
        return {"source": None, "note": f"'{path}' has {len(tokens.data)} tokens, the model {vocab_size} embeddings; "
                                        "no tokenizer written"}
    for name, field in fields.items():
        main = field.types[0]
        sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), main, sub_type=sub)
    return {"source": f"gguf:{path}", "keys": sorted(fields),
            "chat_template": gguf.Keys.Tokenizer.CHAT_TEMPLATE in fields}


def _vocab(folder: Path):
    import gguf  # noqa: PLC0415

    for kind in (gguf.vocab.BpeVocab, gguf.vocab.LlamaHfVocab):
        try:
            return kind(folder)
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
    return None


def add_hf_tokenizer(writer, tokenizer, vocab_size: int, model_type: str) -> dict:
    """Write the ``tokenizer.*`` keys built from a Hugging Face tokenizer; return the summary entry."""
    import gguf  # noqa: PLC0415

    if tokenizer is None:
        return {"source": None, "note": "the model has no tokenizer; no tokenizer.* keys written"}
    with tempfile.TemporaryDirectory(prefix="netslim-gguf-tok-") as tmp:
        try:
            tokenizer.save_pretrained(tmp)
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            return {"source": None, "note": f"the tokenizer could not be saved ({exc}); no tokenizer.* keys written"}
        vocab = _vocab(Path(tmp))
        if vocab is None:
            kind = type(getattr(getattr(tokenizer, "backend_tokenizer", None), "model", tokenizer)).__name__
            return {"source": None, "note": f"the tokenizer ({kind}) is neither a byte-level BPE nor a SentencePiece "
                                            "BPE, which GGUF tokenizers are; no tokenizer.* keys written"}
        tokens, scores, types = (list(column) for column in zip(*vocab.all_tokens()))
        if len(tokens) > vocab_size:
            return {"source": None, "note": f"the tokenizer has {len(tokens)} tokens, the model {vocab_size} "
                                            "embeddings; no tokenizer.* keys written"}
        for token_id, added in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if token_id < len(types):
                types[token_id] = gguf.TokenType.CONTROL if added.special else gguf.TokenType.USER_DEFINED
        for i in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model(vocab.tokenizer_model)
        entry = {"source": "hf", "model": vocab.tokenizer_model, "tokens": len(tokens)}
        if vocab.tokenizer_model == "gpt2":
            entry["pre"] = _PRE_TOKENIZERS.get(model_type, "default")
            writer.add_tokenizer_pre(entry["pre"])
            if entry["pre"] == "default":
                entry["note"] = ("BPE pre-tokenizer written as 'default': llama.cpp may split text before BPE "
                                 "differently from the Hugging Face tokenizer")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        special = gguf.vocab.SpecialVocab(tmp, load_merges=vocab.tokenizer_model == "gpt2", n_vocab=len(tokens))
        special.add_to_gguf(writer, quiet=True)
        entry["chat_template"] = special.chat_template is not None
        return entry
