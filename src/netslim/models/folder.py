"""Reading a Hugging Face model folder safely: its files checked first, no code from it run.

No code from a model folder ever runs: every ``from_pretrained`` gets
``trust_remote_code=False``, and a folder whose ``config.json`` or ``tokenizer_config.json``
has an ``auto_map`` (custom Python code) is refused before anything is loaded. Files are
checked before ``transformers`` reads them, so that a broken download gets one line naming
the file instead of a traceback: invalid JSON, a config without ``model_type``, a truncated
safetensors file, a tokenizer that does not load, and models that are not causal language
models (T5, BERT) are all reported as :class:`~netslim.errors.NetslimError`.

This module sits below both :mod:`netslim.models.loading` (which adds hub ids, GGUF files,
aliases and netslim output folders) and :mod:`netslim.export.load` (which reads netslim
output folders), so neither needs the other's import.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netslim.errors import (
    CustomCodeError,
    ModelFileError,
    ModelNotFoundError,
    NetslimError,
    UnsupportedModelError,
)
from netslim.models.adapter import ModelAdapter
from netslim.models.registry import families

NETSLIM_MARKER = "netslim.json"
CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# Files that make a folder "have a tokenizer", the vocabularies first (the file an error names).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
)
_VOCABULARIES = TOKENIZER_FILES[:6]
_FIX = "re-download the model or re-save it with save_pretrained"


@dataclass
class LoadedModel:
    """A model, its tokenizer, and where it came from."""

    model: nn.Module
    tokenizer: object | None
    source: str


def load_hf_folder(folder: Path, dtype: torch.dtype, source: str) -> LoadedModel:
    """Load a plain Hugging Face causal-LM folder and its tokenizer, checking its files first.

    Raises:
        CustomCodeError, UnsupportedModelError, ModelFileError, ModelNotFoundError: as
            :func:`load_model`.
    """
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  (slow import)

    folder = Path(folder)
    config = read_model_config(folder)
    check_causal_lm(config, f"'{folder / CONFIG_FILE}'")
    check_weights(folder)
    tokenizer = load_tokenizer(folder)
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would print before our one-line error
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, trust_remote_code=False, output_loading_info=True
        )
    except (NetslimError, MemoryError):
        raise
    except Exception as exc:  # transformers and safetensors raise many types for broken files
        raise ModelFileError(f"could not load the model in '{folder}' ({_brief(exc)}); {_FIX}") from exc
    finally:
        hf_logging.set_verbosity(verbosity)
    _check_loading_info(folder, model, info)
    model.eval()
    _unfuse_experts(model)
    return LoadedModel(model, tokenizer, source)


def _unfuse_experts(model: nn.Module) -> None:
    """A mixture of experts comes out with one Linear per expert projection, as netslim computes
    it everywhere (:mod:`netslim.models.experts`), so that its perplexity before compression is
    measured by the same code as after."""
    if any(spec.experts and model.config.model_type in spec.model_types for spec in families()):
        ModelAdapter.from_model(model)


def _check_loading_info(folder: Path, model, info: dict) -> None:
    """Refuse weights that do not match the config: a tensor missing (it would be random), one
    left over (the config describes another model), or one of another shape."""
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if isinstance(tied, dict):
        tied = set(tied)
    tie = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in info.get("missing_keys", []) if k not in tied and not (tie and k.endswith("lm_head.weight"))]
    problems = [("missing", missing), ("not in the config", info.get("unexpected_keys", [])),
                ("of another shape", info.get("mismatched_keys", []))]
    for what, keys in problems:
        keys = sorted(keys, key=str)
        if keys:
            raise ModelFileError(f"the weights of '{folder}' do not fit its config.json: {len(keys)} tensors "
                                 f"{what}, e.g. {keys[0]}; {_FIX}")


def load_tokenizer(folder: str | os.PathLike):
    """The tokenizer saved in ``folder``, or ``None`` if the folder has no tokenizer files at all.

    Raises:
        CustomCodeError: if ``tokenizer_config.json`` or ``config.json`` has an ``auto_map``.
        ModelFileError: if tokenizer files exist but do not load (naming the file).
    """
    folder = Path(folder)
    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if not present:
        return None
    check_no_custom_code(folder)
    for name in present:
        if name.endswith(".json"):
            _read_json(folder / name)
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (NetslimError, MemoryError):
        raise
    except Exception as exc:
        if not any(name in _VOCABULARIES for name in present):
            raise ModelFileError(
                f"the tokenizer in '{folder}' does not load: it has {', '.join(present)} but no vocabulary "
                f"file ({', '.join(_VOCABULARIES)}); copy the tokenizer files in or re-save it with save_pretrained"
            ) from exc
        raise ModelFileError(
            f"tokenizer file '{folder / present[0]}' does not load ({_brief(exc)}); re-download the tokenizer "
            "or re-save it with save_pretrained"
        ) from exc


def check_no_custom_code(folder: str | os.PathLike) -> None:
    """Refuse a folder whose ``config.json`` or ``tokenizer_config.json`` has an ``auto_map``.

    Raises:
        CustomCodeError: naming the file; nothing from the folder has been imported.
        ModelFileError: if one of these files is not a JSON object.
    """
    for name in (CONFIG_FILE, TOKENIZER_CONFIG_FILE):
        file = Path(folder) / name
        if file.is_file():
            auto_map = _read_json(file).get("auto_map")
            if auto_map:
                raise CustomCodeError(
                    f"'{file}' has an auto_map ({_first_code_ref(auto_map)}): the folder asks to run its own "
                    "Python code, which netslim never does; use a model that transformers supports natively"
                )


def read_model_config(folder: str | os.PathLike):
    """The ``transformers`` config of a model folder, after checking ``config.json`` by hand.

    Raises:
        CustomCodeError: if the config or tokenizer config has an ``auto_map``.
        ModelFileError: if ``config.json`` is not JSON, has no ``model_type`` or does not load.
        UnsupportedModelError: if ``transformers`` does not know its ``model_type``.
    """
    from transformers import CONFIG_MAPPING, AutoConfig  # noqa: PLC0415

    folder = Path(folder)
    file = folder / CONFIG_FILE
    check_no_custom_code(folder)
    if not file.is_file():
        raise ModelNotFoundError(f"folder '{folder}' has no config.json; is it a Hugging Face model folder?")
    model_type = _read_json(file).get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelFileError(
            f"'{file}' has no model_type, so it is not a transformers model config; {_FIX}"
        )
    if model_type not in CONFIG_MAPPING:
        import transformers  # noqa: PLC0415

        raise UnsupportedModelError(
            f"model type '{model_type}' ('{file}') is not supported: transformers {transformers.__version__} "
            f"does not know it; supported: {', '.join(_supported_model_types())}"
        )
    try:
        return AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (NetslimError, MemoryError):
        raise
    except Exception as exc:
        raise ModelFileError(f"'{file}' does not load as a {model_type} config ({_brief(exc)}); {_FIX}") from exc


def check_causal_lm(config, where: str) -> None:
    """Refuse configs of models that are not causal language models (T5, BART, BERT, ...).

    Args:
        config: A ``transformers`` config.
        where: Where it came from, for the message (a quoted file name, a hub id).

    Raises:
        UnsupportedModelError: worded like the error for a family without an adapter.
    """
    from transformers.models.auto.modeling_auto import (  # noqa: PLC0415
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        reason = "it is an encoder-decoder model, not a causal language model"
    elif model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        reason = "it is not a causal language model"
    elif model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        reason = "it is an encoder (a masked language model), not a causal language model"
    else:
        return
    raise UnsupportedModelError(
        f"model type '{model_type}' ({where}) is not supported: {reason}; "
        f"supported: {', '.join(_supported_model_types())}"
    )


def _supported_model_types() -> list[str]:
    from netslim.models import adapter  # noqa: F401, PLC0415  (registers the families)
    from netslim.models.registry import supported_model_types  # noqa: PLC0415

    return supported_model_types()


def _brief(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` of an exception on one line, shortened."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first_code_ref(auto_map) -> str:
    """The first ``module.Class`` an ``auto_map`` points to, for the message."""
    values = list(auto_map.values()) if isinstance(auto_map, dict) else [auto_map]
    for value in values:
        for ref in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(ref, str) and ref:
                return " ".join(ref.split())[:120]
    return "custom code"


def _read_json(file: Path) -> dict:
    """A JSON object file, or a one-line :class:`ModelFileError` naming it."""
    try:
        data = json.loads(file.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ModelFileError(f"'{file}' is not a UTF-8 JSON file; {_FIX}") from None
    except json.JSONDecodeError as exc:
        raise ModelFileError(
            f"'{file}' is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); {_FIX}"
        ) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read '{file}' ({exc.strerror or type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"'{file}' holds a JSON {type(data).__name__}, not an object; {_FIX}")
    return data


def check_weights(folder: Path) -> list[Path]:
    """Check the safetensors files ``from_pretrained`` will read: present and not truncated;
    return them (empty for the legacy ``pytorch_model.bin`` layout, which transformers checks)."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFileError(f"'{index}' has no weight_map; {_FIX}")
        files = [folder / str(name) for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise ModelFileError(f"'{index}' lists {file.name}, which is missing; re-download the model")
    elif (folder / "pytorch_model.bin").is_file() or (folder / "pytorch_model.bin.index.json").is_file():
        return []  # read by transformers (weights only); its errors are reported in one line by the caller
    else:
        raise ModelNotFoundError(
            f"folder '{folder}' has a config.json but no weights (model.safetensors); {_FIX}"
        )
    for file in files:
        _check_safetensors(file)
    return files


def _check_safetensors(file: Path) -> None:
    """Read a safetensors header and check that the file holds every byte it describes."""
    size = file.stat().st_size
    with file.open("rb") as fh:
        prefix = fh.read(8)
        length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if length < 2 or 8 + length > size:
            raise ModelFileError(f"'{file}' is truncated or not a safetensors file (its header is incomplete); {_FIX}")
        raw = fh.read(length)
    try:
        header = json.loads(raw)
        end = max(
            (int(info["data_offsets"][1]) for key, info in header.items() if key != "__metadata__"), default=0
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise ModelFileError(f"'{file}' is not a safetensors file (its header is not valid); {_FIX}") from None
    if 8 + length + end > size:
        raise ModelFileError(
            f"'{file}' is truncated: it has {size} bytes, its header describes {8 + length + end}; {_FIX}"
        )
