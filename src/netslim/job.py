"""The end-to-end job behind ``netslim compress`` and ``netslim demo``.

Load the model, measure the dense baseline, compress, measure again under the same protocol,
and write the model with its recipe and report. The input is only ever read.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from netslim.api import CompressionResult, calibration, check_finite, compress, evaluate
from netslim.data import resolve_text
from netslim.engine.sequential import check_llm_stages
from netslim.errors import ConfigError, NetslimError
from netslim.eval.report import json_safe
from netslim.export.atomic import check_output, check_writable
from netslim.export.load import read_marker
from netslim.export.save import FORMATS, round_for_storage, save
from netslim.methods.base import FLOAT
from netslim.methods.preflight import check_recipe, check_seqlen, meta_adapter, model_shape
from netslim.models.adapter import ModelAdapter
from netslim.models.loading import NETSLIM_MARKER, cache_dir, load_model, read_model_config
from netslim.recipe import RecipeLike, parse_recipe, recipe_data


@dataclass(frozen=True)
class Protocol:
    """How quality is measured and where calibration data comes from.

    The defaults are the small protocol of the project (seqlen 512, 64 calibration windows of
    WikiText-2 valid with seed 0, the first 80 windows of WikiText-2 test).
    """

    seqlen: int = 512
    calib: str = "wikitext2:valid"
    calib_windows: int = 64
    eval: str = "wikitext2:test"
    eval_windows: int | None = 80
    seed: int = 0

    def __post_init__(self) -> None:
        if self.seqlen < 2:
            raise ConfigError(f"seqlen={self.seqlen}: a window needs at least 2 tokens")
        if self.calib_windows < 1:
            raise ConfigError(f"calib_windows={self.calib_windows}: use at least 1")
        if self.eval_windows is not None and self.eval_windows < 1:
            raise ConfigError(f"eval_windows={self.eval_windows}: use at least 1, or None for all")


def compress_job(
    source: str,
    recipe: RecipeLike,
    out: str | os.PathLike | None,
    protocol: Protocol = Protocol(),
    overwrite: bool = False,
    progress: bool = True,
    storage_format: str = "auto",
) -> CompressionResult:
    """Run the whole job; ``out=None`` skips writing. Returns the result with its report.

    Everything that can be checked before the model's weights are read is checked first (the
    recipe against the model's config, the output folder, the texts, the window length), and
    the rest before the baseline is measured, so a mistake costs seconds, not minutes.

    ``storage_format`` is passed to :func:`netslim.save` as ``format`` (``"auto"``,
    ``"dense"`` or ``"packed"``).

    Raises:
        NetslimError: one line saying what to change, before any expensive work.
    """
    stages = parse_recipe(recipe)
    check_llm_stages(stages)
    if storage_format not in FORMATS:
        raise ConfigError(f"storage format '{storage_format}': use one of {', '.join(FORMATS)}")
    needs_calibration = any(stage.needs_calibration for stage in stages)
    if out is not None:
        check_output(out, overwrite, inputs=[source, protocol.calib, protocol.eval])
        check_writable(cache_dir(), "the netslim cache ($NETSLIM_CACHE)")
    resolve_text(protocol.eval)  # a missing or unreadable text fails here, before any work
    if needs_calibration:
        resolve_text(protocol.calib)
    saved = _saved_config(source)
    if saved is not None:  # a local folder: check the recipe on its config, before reading weights
        config, modules = saved
        _preflight(stages, protocol, config, meta_adapter(config), modules, storage_format)
    lm = load_model(source)
    if saved is None:
        _preflight(stages, protocol, lm.model.config, ModelAdapter.from_model(lm.model), None, storage_format)
    if lm.tokenizer is None:
        raise ConfigError(f"model '{source}' has no tokenizer; netslim needs one to read the calibration and "
                          "evaluation text: add the tokenizer files to the folder")
    evaluation = dict(data=protocol.eval, seqlen=protocol.seqlen, windows=protocol.eval_windows, progress=progress)
    baseline = evaluate(lm, **evaluation)  # refuses NaN/inf weights before any forward
    if not math.isfinite(baseline.ppl):
        raise NetslimError(f"model '{source}' has a non-finite perplexity ({baseline.ppl}) on {protocol.eval}: its "
                           "outputs overflow, so there is nothing to compress")
    windows = None
    if needs_calibration:
        windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen, seed=protocol.seed)
    checkpoints = _checkpoint_dir(out)
    result = compress(lm, stages, windows, progress=progress, checkpoint_dir=checkpoints)
    check_finite(lm.model, "the compressed model")
    if out is not None:  # measure exactly the values the folder will hold (fp16 beside quantized layers)
        round_for_storage(result.model, format=storage_format)
    after = evaluate(lm, **evaluation)
    result.report = json_safe({
        "model": source,
        "recipe": recipe_data(result.recipe),  # resolved: per-block and per-layer choices spelled out
        "protocol": {**baseline.perplexity.protocol(), "calibration": result.calibration, "settings": asdict(protocol)},
        "baseline": baseline.as_dict(),
        "compressed": after.as_dict(),
        "compress_seconds": result.seconds,
        "peak_rss_bytes": result.peak_rss_bytes,
        "layers": result.layers,
    })
    if out is not None:
        save(result, out, overwrite=overwrite, format=storage_format)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def _saved_config(source: str):
    """``(config, saved modules)`` of a local model folder, read without its weights; ``None``
    for other sources (aliases, GGUF files, hub ids).

    Raises:
        NetslimError: for a config that is corrupt, unsupported or asks to run its own code.
    """
    folder = Path(source).expanduser()
    if not (folder / "config.json").is_file():
        return None
    config = read_model_config(folder)
    modules = None
    if (folder / NETSLIM_MARKER).is_file():
        modules = read_marker(folder).get("modules")
    return config, modules if isinstance(modules, dict) else None


def _preflight(stages, protocol: Protocol, config, adapter: ModelAdapter, modules: dict | None,
               storage_format: str) -> None:
    check_seqlen(config, protocol.seqlen)
    shape = model_shape(adapter, modules)
    check_recipe(stages, shape)
    if storage_format == "dense":  # plain transformers holds plain and dequantized layers only
        odd = ({layer.kind for layer in shape.layers.values()} | shape.module_kinds) - {FLOAT, "quantized"}
        uneven = [s.method for s in stages if s.method == "width" and (s.compensates or s.allocation == "global")]
        if odd or uneven:
            what = ", ".join(sorted(odd)) or "per-block widths or compensation biases"
            raise ConfigError(f"--format dense (plain transformers) cannot hold what this recipe makes ({what}); "
                              "use --format auto or packed")


def _checkpoint_dir(out: str | os.PathLike | None) -> Path | None:
    """Per-output checkpoint folder in the cache, so an interrupted job resumes when rerun."""
    if out is None:
        return None
    key = hashlib.sha256(str(Path(out).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "checkpoints" / key
