"""``netslim bench``: prefill and decode speed of a model beside its dense original, in one run.

Two runtimes:

- ``torch``: the model as netslim loads it (a netslim folder through :func:`netslim.load`'s
  modules, any other source through :func:`netslim.load_model`), timed by
  :func:`netslim.eval.latency.compare_latency`.
- ``llama.cpp``: a ``.gguf`` file run by llama-cpp-python (the optional extra
  ``netslim[llamacpp]``); a netslim folder or any other model is first exported to a temporary
  GGUF file (:func:`netslim.export_gguf`, ``gguf_type``).

The dense model beside it: ``dense`` when given; otherwise the source the model was made
from (a netslim folder's ``netslim.json``; a GGUF file netslim exported names its source in
``netslim.source``). In the llama.cpp runtime the dense model is exported with the same
type as the model's file (its most common weight type, e.g. ``q4_0`` for a 4-bit GPTQ export,
and its embedding's type for the embedding), so that a speed-up measures what
compression removed, not a different number format.

Protocol: the prompt is ``prompt_tokens`` fixed pseudo-random token ids (seed 0; speed does
not depend on the text); prefill = one forward over it from an empty cache, last-token
logits only; decode = a prefill of its first ``generate_prompt`` tokens then greedy
generation of exactly ``new_tokens`` tokens. Each figure is the median of ``repeats`` runs
after ``warmup`` runs; the models' runs alternate, so a busy machine slows both alike.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from netslim.errors import ConfigError, ModelNotFoundError

RUNTIMES = ("torch", "llama.cpp")
GENERATE_PROMPT = 32


def check_options(runtime: str, threads: int | None, prompt_tokens: int, new_tokens: int, repeats: int) -> None:
    """One-line errors for bad options, before anything is loaded."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime '{runtime}': use torch or llama.cpp")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: use 1 or more")
    if prompt_tokens < GENERATE_PROMPT:
        raise ConfigError(f"--prompt-tokens {prompt_tokens}: use at least {GENERATE_PROMPT}")
    if new_tokens < 1:
        raise ConfigError(f"--new-tokens {new_tokens}: use 1 or more")
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: use 1 or more")
    if runtime == "llama.cpp":
        from netslim.eval import llamacpp  # noqa: PLC0415

        llamacpp.require()


def _gguf_fields(path: Path) -> dict:
    import gguf  # noqa: PLC0415

    reader = gguf.GGUFReader(path)
    fields = {name: reader.fields[name].contents() for name in ("netslim.source", "general.file_type")
              if name in reader.fields}
    types = [t.tensor_type.name for t in reader.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"]
    fields["weight_type"] = max(set(types), key=types.count) if types else "F16"
    fields["embedding_type"] = next((t.tensor_type.name for t in reader.tensors if t.name == "token_embd.weight"),
                                    fields["weight_type"])
    return fields


def dense_source(model: str) -> str | None:
    """The dense model ``model`` was made from, or ``None`` when it names none (it may be dense)."""
    from netslim.export.load import read_marker  # noqa: PLC0415
    from netslim.models.loading import NETSLIM_MARKER  # noqa: PLC0415

    path = Path(model).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        origin = _gguf_fields(path).get("netslim.source")
        return None if origin is None else (dense_source(origin) or origin)
    if (path / NETSLIM_MARKER).is_file():
        return read_marker(path).get("source")
    return None


def _torch_model(source: str):
    from netslim.export.load import load  # noqa: PLC0415
    from netslim.models.loading import NETSLIM_MARKER, load_model  # noqa: PLC0415

    path = Path(source).expanduser()
    loaded = load(path) if (path / NETSLIM_MARKER).is_file() else load_model(source)
    return loaded.model.eval()


def _prompt(vocab_size: int, tokens: int) -> list[int]:
    return torch.randint(0, vocab_size, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()


def _figures(prefill: list[float], generate: list[float], prompt_tokens: int, new_tokens: int) -> dict:
    p, g = statistics.median(prefill), statistics.median(generate)
    return {"prefill_s": p, "prefill_tokens_per_s": prompt_tokens / p, "generate_s": g,
            "decode_tokens_per_s": new_tokens / g, "ms_per_generated_token": 1000 * g / new_tokens,
            "runs": len(prefill)}


def _bench_torch(models: dict[str, str], threads, prompt_tokens, new_tokens, repeats, warmup) -> dict:
    from netslim.eval.latency import compare_latency  # noqa: PLC0415

    loaded = {name: _torch_model(source) for name, source in models.items()}
    vocab = min(m.get_input_embeddings().num_embeddings for m in loaded.values())
    ids = torch.tensor([_prompt(vocab, prompt_tokens)])
    lat = compare_latency(loaded, ids, new_tokens=new_tokens, generate_prompt=GENERATE_PROMPT, repeats=repeats,
                          warmup=warmup, threads=threads)
    return {name: {**_figures(lat[name].prefill_runs, lat[name].generate_runs, prompt_tokens, new_tokens),
                   "threads": lat[name].threads} for name in models}


def _as_gguf(source: str, folder: Path, name: str, gguf_type: str, embeddings: str | None = None) -> Path:
    """``source`` itself if it is a GGUF file, else its export with ``gguf_type`` (and ``embeddings``) into ``folder``."""
    from netslim.export.gguf import export_gguf  # noqa: PLC0415

    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"'{source}' is not a file; give an existing .gguf file")
        return path
    return Path(export_gguf(source, folder / f"{name}.gguf", type=gguf_type, embeddings=embeddings)["path"])


def _bench_llamacpp(models: dict[str, Path], threads, prompt_tokens, new_tokens, repeats, warmup) -> dict:
    from netslim.eval.llamacpp import LlamaCppModel  # noqa: PLC0415

    threads = threads or torch.get_num_threads()
    loaded = {name: LlamaCppModel(path, threads, n_ctx=prompt_tokens + new_tokens) for name, path in models.items()}
    try:
        ids = _prompt(min(m.vocab_size for m in loaded.values()), prompt_tokens)
        prefill = {name: [] for name in models}
        generate = {name: [] for name in models}
        for run in range(warmup + repeats):
            for name, model in loaded.items():
                p = model.prefill(ids)
                g = model.generate(ids[:GENERATE_PROMPT], new_tokens)
                if run >= warmup:
                    prefill[name].append(p)
                    generate[name].append(g)
    finally:
        for model in loaded.values():
            model.close()
    return {name: {**_figures(prefill[name], generate[name], prompt_tokens, new_tokens), "threads": threads}
            for name in models}


def bench(model: str, runtime: str = "torch", threads: int | None = None, dense: str | None = None,
          prompt_tokens: int = 512, new_tokens: int = 64, repeats: int = 5, warmup: int = 1,
          gguf_type: str | None = None) -> dict[str, Any]:
    """Time ``model`` and its dense original side by side; return the JSON-ready results.

    Args:
        model: A netslim folder, a ``.gguf`` file, or any model netslim loads.
        runtime: ``torch`` or ``llama.cpp``.
        threads: CPU threads (default: torch's current setting).
        dense: The dense model to compare with (default: the one ``model`` was made from;
            none when it names none).
        prompt_tokens / new_tokens / repeats / warmup: The protocol (module docstring).
        gguf_type: llama.cpp runtime: the type used to export what is not a GGUF file yet
            (default: the model file's own weight type for the dense model, ``auto`` else).

    Returns:
        ``runtime``, ``threads``, ``protocol``, ``models`` (``model`` and ``dense``: source,
        bytes of a GGUF file, prefill and decode figures) and, with a dense model,
        ``prefill_speedup`` and ``decode_speedup`` (dense time / model time).

    Raises:
        ConfigError, ModelNotFoundError, NetslimError: bad options or sources, before any timing.
    """
    check_options(runtime, threads, prompt_tokens, new_tokens, repeats)
    dense = dense or dense_source(model)
    sources = {"model": model, **({"dense": dense} if dense else {})}
    protocol = {"prompt_tokens": prompt_tokens, "generate_prompt_tokens": GENERATE_PROMPT, "new_tokens": new_tokens,
                "repeats": repeats, "warmup": warmup, "prompt": "pseudo-random token ids, seed 0",
                "order": "models alternate within each run; medians reported"}
    entries = {name: {"source": str(source)} for name, source in sources.items()}
    if runtime == "torch":
        figures = _bench_torch(sources, threads, prompt_tokens, new_tokens, repeats, warmup)
    else:
        from netslim.export.gguf.write import TYPES, check_type  # noqa: PLC0415

        tmp = Path(tempfile.mkdtemp(prefix="netslim-bench-"))
        try:
            files = {"model": _as_gguf(model, tmp, "model", check_type("--type", gguf_type or "auto"))}
            fields = {"model": _gguf_fields(files["model"])}
            if dense:  # the model file's types, for the weights and for the embedding
                same = gguf_type or fields["model"]["weight_type"].lower()
                embeddings = fields["model"]["embedding_type"].lower()
                files["dense"] = _as_gguf(dense, tmp, "dense", same if same in TYPES else "auto",
                                          embeddings if embeddings in TYPES else None)
                fields["dense"] = _gguf_fields(files["dense"])
            for name, path in files.items():
                entries[name].update(gguf=str(path) if path.parent != tmp else f"(exported: {path.name})",
                                     bytes=path.stat().st_size, weight_type=fields[name]["weight_type"])
            figures = _bench_llamacpp(files, threads, prompt_tokens, new_tokens, repeats, warmup)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    for name in entries:
        entries[name].update(figures[name])
    out = {"runtime": runtime, "threads": figures["model"]["threads"], "protocol": protocol, "models": entries}
    if dense:
        out["prefill_speedup"] = entries["dense"]["prefill_s"] / entries["model"]["prefill_s"]
        out["decode_speedup"] = entries["dense"]["generate_s"] / entries["model"]["generate_s"]
    return out
