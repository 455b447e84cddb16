"""``export_gguf``: write a (compressed) model as one GGUF file for llama.cpp and other GGUF runtimes.

Steps, each failing with one line before the next starts:

1. The options (the type names of ``type``, ``embeddings``, ``head``) and the output path are checked (a ``.gguf`` name; an existing file is replaced
   only with ``overwrite`` and only if netslim exported it, which its ``netslim.version`` key
   records; the output may not be, or lie inside, the input).
2. The model is loaded (a source string) and checked: a supported family
   (:mod:`~netslim.export.gguf.metadata`), no module kind GGUF cannot express (SliceGPT's
   sliced blocks, low-rank factorized layers), every tensor mapped
   (:mod:`~netslim.export.gguf.tensors`).
3. Every tensor is encoded in memory (:mod:`~netslim.export.gguf.encode`).
4. The file is written in a temporary folder next to the output (``.<name>.tmp-XXXX``, marked
   with netslim's partial-work file so a killed run's leftovers are removed by the next run)
   and renamed into place: a failed run leaves the output as it was.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from netslim.errors import ConfigError, NetslimError, OutputExistsError
from netslim.export.atomic import check_writable, clean_stale, partial_folder
from netslim.export.gguf import metadata
from netslim.export.gguf import tokenizer as tok
from netslim.export.gguf.encode import FLOAT_TYPES, encode
from netslim.export.gguf.tensors import plan_tensors

TYPES = tuple(FLOAT_TYPES)  # auto, f32, f16, bf16, q8_0, q6_k, ..., q3_k
OWNER_KEY = "netslim.version"  # in every file netslim exports: what --overwrite may replace
_KIND_WORDS = {
    "factorized_linear": "a low-rank factorized layer (svd, svd_llm, asvd)",
    "lowrank_compensated": "a quantized layer with a low-rank correction (eora)",
    "sliced_decoder_layer": "a SliceGPT-sliced block",
    "embedding": "a SliceGPT-sliced embedding",
    "unscaled_rmsnorm": "a SliceGPT-folded norm",
}
_FILE_TYPES = {"F32": "ALL_F32", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "Q8_0": "MOSTLY_Q8_0",
               "Q4_0": "MOSTLY_Q4_0", "Q4_1": "MOSTLY_Q4_1", "Q5_0": "MOSTLY_Q5_0", "Q5_1": "MOSTLY_Q5_1",
               "Q3_K": "MOSTLY_Q3_K_M", "Q4_K": "MOSTLY_Q4_K_M", "Q5_K": "MOSTLY_Q5_K_M", "Q6_K": "MOSTLY_Q6_K"}


def _written_by_netslim(path: Path) -> bool:
    try:
        import gguf  # noqa: PLC0415

        return OWNER_KEY in gguf.GGUFReader(path).fields
    except Exception:  # not a GGUF file, or a damaged one: not netslim's to replace
        return False


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_gguf_output(path: str | os.PathLike, overwrite: bool, inputs: list[Path]) -> Path:
    """Fail early, before any work, if the GGUF file ``path`` may not be written.

    Raises:
        ConfigError: not a ``.gguf`` name, the input itself or inside it, or not writable.
        OutputExistsError: it exists and may not be replaced, saying why.
    """
    target = Path(path).expanduser().absolute()
    if target.suffix != ".gguf":
        raise ConfigError(f"--out '{path}': name a .gguf file, e.g. --out model.gguf")
    resolved = target.resolve()
    for source in inputs:
        if source.exists() and _inside(resolved, source.resolve()):
            relation = "is" if resolved == source.resolve() else "lies inside"
            raise ConfigError(f"output '{path}' {relation} the input '{source}'; choose an output outside it")
    if target.is_dir():
        raise OutputExistsError(f"output '{path}' is a folder; name a .gguf file, e.g. --out model.gguf")
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise OutputExistsError(f"output '{path}' already exists; choose another --out or pass --overwrite")
        if target.is_symlink() or not _written_by_netslim(target):
            raise OutputExistsError(f"output '{path}' was not written by netslim; --overwrite replaces only "
                                    "GGUF files netslim exported, choose another --out")
    check_writable(target.parent, "output")
    return target


def _source_paths(source: str | None) -> list[Path]:
    """Files and folders the export reads, which its output must not replace."""
    if not source:
        return []
    paths = [Path(source).expanduser()]
    origin = tok.source_gguf(source)
    return paths + ([origin] if origin is not None else [])


def _unpack(model: Any) -> tuple[Any, Any, str | None]:
    """(module, tokenizer, source) of a source string, a LoadedModel, a CompressionResult or a module."""
    if isinstance(model, (str, os.PathLike)):
        from netslim.models.loading import load_model  # noqa: PLC0415

        model = load_model(str(model))
    if hasattr(model, "model") and hasattr(model, "source"):
        source = None if model.source == "in-memory model" else model.source  # netslim's name for "no source"
        return model.model, getattr(model, "tokenizer", None), source
    from torch import nn  # noqa: PLC0415

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a transformers causal LM, a LoadedModel, a CompressionResult or a "
                          f"model source string, got {type(model).__name__}")
    return model, None, None


def check_modules(model) -> None:
    """Refuse module kinds GGUF cannot express (SliceGPT, low-rank factorization), naming the first.

    Raises:
        ConfigError: saying what to export instead.
    """
    for name, module in model.named_modules():
        kind = getattr(type(module), "netslim_kind", None)
        if kind is not None and kind != "quantized":
            what = _KIND_WORDS.get(kind, f"a '{kind}' module")
            raise ConfigError(f"'{name}' is {what}, which cannot be expressed in GGUF; "
                              "export a pruned or quantized model instead")


def check_type(option: str, value: str) -> str:
    """``value`` lower-cased if it names a type (:data:`TYPES`).

    Raises:
        ConfigError: one line naming the option and listing the valid types.
    """
    name = str(value).lower()
    if name not in TYPES:
        raise ConfigError(f"{option} '{value}': use one of {', '.join(TYPES)}")
    return name


def _requested(source, types: dict[str, str]) -> str:
    if source.kind == "embedding":
        return types["embeddings"]
    return types["head"] if source.gguf_name == "output.weight" else types["type"]


def _importance(importance: dict, sources) -> dict:
    """``{gguf name: vector}`` of the 2-D weights named in ``importance`` (by module name).

    Raises:
        ConfigError: a name that is no weight of the model, or a vector of the wrong length.
    """
    weights = {s.hf_name.removesuffix(".weight"): s for s in sources if s.kind == "weight"}
    out = {}
    for name, vector in importance.items():
        if name not in weights:
            raise ConfigError(f"importance for '{name}': not a Linear weight of the model (e.g. "
                              f"'{next(iter(weights))}')")
        source = weights[name]
        cols = source.quantized.in_features if source.quantized is not None else source.tensor.shape[-1]
        if len(vector) != cols:
            raise ConfigError(f"importance for '{name}' has {len(vector)} values; the layer has {cols} inputs")
        out[source.gguf_name] = vector
    return out


def export_gguf(model: Any, out: str | os.PathLike, type: str = "auto", overwrite: bool = False,  # noqa: A002
                embeddings: str | None = None, head: str | None = None, importance: dict | None = None) -> dict:
    """Write ``model`` as the GGUF file ``out``; return a summary.

    Args:
        model: A netslim output folder, any source :func:`netslim.load_model` reads (folder,
            ``.gguf`` file, alias, hub id), a ``LoadedModel``, a ``CompressionResult`` or a
            transformers causal LM.
        out: The ``.gguf`` file to write.
        type: How float weights are stored: ``f32``, ``f16``, ``bf16``, a block type (``q8_0``,
            ``q6_k``, ``q5_k``, ``q5_1``, ``q5_0``, ``q4_k``, ``q4_1``, ``q4_0``, ``q3_k``,
            quantized by netslim's search), or ``auto`` (f16). Norms and biases are always f32;
            quantized layers keep their codes in the GGUF block type of their grid where one
            exists, else are dequantized to this type.
        overwrite: Replace ``out`` if it exists and netslim exported it.
        embeddings: The type of ``token_embd`` (default: ``type``).
        head: The type of an untied ``output`` head (default: ``type``); a head tied to the
            embedding is written once, as ``token_embd``.
        importance: Optional ``{module name: (in_features,) tensor}``, e.g. each input
            channel's mean ``x^2`` over calibration data, weighting the squared error the
            block-type search minimizes for that layer's weight.

    Returns:
        ``path``, ``architecture``, ``type``, ``block_count``, ``per_layer_sizes`` (whether
        head counts and MLP widths are per-layer arrays), ``tensors`` (one record each:
        ``name``, ``source``, ``shape``, ``type``, ``exact``, ``fallback_reason``; a float
        weight whose rows its type's blocks do not divide is stored in a fallback type, the
        reason said), ``embeddings`` and ``head`` (the requested types),
        ``tokenizer`` (where the ``tokenizer.*`` keys came from, or why there are none),
        ``notes`` and ``bytes``.

    Raises:
        ConfigError, OutputExistsError, UnsupportedModelError: before anything is written.
    """
    type = check_type("--type", type)
    types = {"type": type, "embeddings": check_type("--embeddings", type if embeddings is None else embeddings),
             "head": check_type("--head", type if head is None else head)}
    try:
        import gguf  # noqa: PLC0415
    except ImportError:
        raise NetslimError("GGUF export needs the gguf package: pip install 'netslim[gguf]'") from None
    given = str(model) if isinstance(model, (str, os.PathLike)) else getattr(model, "source", None)
    target = check_gguf_output(out, overwrite, _source_paths(given))
    module, tokenizer, source = _unpack(model)
    adapter = metadata.check_family(module)
    check_modules(module)
    sizes = metadata.block_sizes(adapter)
    arch = metadata.architecture(adapter, sizes)
    sources = plan_tensors(adapter, arch, [(q, kv) for q, kv, _ in sizes])
    weights = _importance(importance or {}, sources)
    encoded = [encode(s, _requested(s, types), weights.get(s.gguf_name)) for s in sources]
    tied = not any(s.gguf_name == "output.weight" for s in sources)

    prefix = f".{target.name}.tmp-"
    clean_stale(target.parent, prefix)
    tmp = partial_folder(target.parent, prefix)
    try:
        file = tmp / target.name
        writer = gguf.GGUFWriter(file, arch)
        summary = _write(writer, adapter, arch, sizes, encoded, source, tokenizer, type)
        summary.update(embeddings=types["embeddings"], head=types["head"])
        if tied and head is not None and types["head"] != types["embeddings"]:
            summary["notes"].append(f"the head is tied to the embedding: written once as token_embd "
                                    f"({types['embeddings']}); --head {types['head']} does not apply")
        if target.exists():
            check_gguf_output(out, overwrite, [])  # still netslim's own
        os.replace(file, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(target), **summary, "bytes": target.stat().st_size}


def _write(writer, adapter, arch, sizes, encoded, source, tokenizer, requested: str) -> dict:
    """Write the keys and tensors with ``writer``; return the summary (but ``path`` and ``bytes``)."""
    import gguf  # noqa: PLC0415

    from netslim import __version__  # noqa: PLC0415

    vocab_size = adapter.embeddings[0].num_embeddings
    name = Path(source).name if source else f"{adapter.config.model_type}-netslim"
    # transformers' GGUF loader reads a llama file named exactly "mistral" as a Mistral one, which it cannot map
    writer.add_name(f"{name}-netslim" if name == "mistral" else name)
    writer.add_string(OWNER_KEY, __version__)
    if source:
        writer.add_string("netslim.source", str(source))
    notes = metadata.add_hparams(writer, adapter, arch, sizes)
    weight_types = Counter(qtype for _, qtype, rec in encoded if len(rec["shape"]) == 2)
    writer.add_file_type(int(getattr(gguf.LlamaFileType, _FILE_TYPES[weight_types.most_common(1)[0][0]])))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    origin = tok.source_gguf(source)
    if origin is not None:
        token_info = tok.copy_gguf_tokenizer(writer, origin, vocab_size)
    else:
        token_info = tok.add_hf_tokenizer(writer, tokenizer, vocab_size, adapter.config.model_type)
    for data, qtype, record in encoded:
        raw = getattr(gguf.GGMLQuantizationType, qtype)
        writer.add_tensor(record["name"], data, raw_dtype=raw if data.dtype.kind == "u" else None)
    standard = {"attn_q", "attn_k", "attn_v"} if arch == "qwen2" else set()
    biases = sorted({rec["name"].split(".")[-2] for _, _, rec in encoded if rec["name"].endswith(".bias")} - standard)
    if arch != metadata.PER_LAYER_ARCH and biases:
        notes.append(f"biases of {', '.join(biases)} (e.g. width pruning's compensation): llama.cpp reads them for "
                     f"'llama', transformers' GGUF loader builds '{arch}' models without them")
    narrow = [i for i, (n_q, _, _) in enumerate(sizes) if n_q * adapter.head_dim != adapter.hidden_size]
    if narrow and any(rec["name"] == f"blk.{narrow[0]}.attn_q.bias" for _, _, rec in encoded):
        notes.append(f"blocks {narrow} have fewer query heads than embedding_length / head width and a q bias: "
                     "llama.cpp sizes attn_q.bias by embedding_length and may refuse the file")
    if narrow and arch == "qwen2":
        notes.append("query heads removed: transformers' GGUF loader derives qwen2's head width from "
                     "embedding_length / head_count and cannot load this file; llama.cpp reads attention.key_length")
    if arch == metadata.PER_LAYER_ARCH:
        notes.append("blocks differ in size: written as architecture 'deci' with per-layer arrays, which llama.cpp "
                     "reads; transformers' GGUF loader cannot load it")
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return {
        "architecture": arch,
        "type": requested,
        "block_count": adapter.num_blocks,
        "per_layer_sizes": arch == metadata.PER_LAYER_ARCH,
        "tensors": [record for _, _, record in encoded],
        "tokenizer": token_info,
        "notes": notes,
    }
