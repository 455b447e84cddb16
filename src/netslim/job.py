"""The end-to-end job behind ``netslim compress`` and ``netslim demo``.

Load the model, measure the dense baseline, compress, measure again under the same protocol,
and write the model with its recipe and report. The input is only ever read.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from netslim.api import CompressionResult, calibration, compress, evaluate
from netslim.data import resolve_text
from netslim.errors import ConfigError, OutputExistsError
from netslim.engine.sequential import check_llm_stages
from netslim.export.atomic import check_output
from netslim.export.save import FORMATS, save
from netslim.models.loading import cache_dir, load_model
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

    ``storage_format`` is passed to :func:`netslim.save` as ``format`` (``"auto"``,
    ``"dense"`` or ``"packed"``).
    """
    stages = parse_recipe(recipe)
    check_llm_stages(stages)
    if storage_format not in FORMATS:
        raise ConfigError(f"storage format '{storage_format}': use one of {', '.join(FORMATS)}")
    if out is not None:
        check_output(out, overwrite)  # fail before minutes of work, not after
        _refuse_input_as_output(source, out)
    needs_calibration = any(stage.needs_calibration for stage in stages)
    if needs_calibration:
        resolve_text(protocol.calib)  # a missing calibration file fails here, before any work
    lm = load_model(source)
    evaluation = dict(data=protocol.eval, seqlen=protocol.seqlen, windows=protocol.eval_windows, progress=progress)
    baseline = evaluate(lm, **evaluation)
    windows = None
    if needs_calibration:
        windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen, seed=protocol.seed)
    checkpoints = _checkpoint_dir(out)
    result = compress(lm, stages, windows, progress=progress, checkpoint_dir=checkpoints)
    after = evaluate(lm, **evaluation)
    result.report = {
        "model": source,
        "recipe": recipe_data(stages),
        "protocol": {**baseline.perplexity.protocol(), "calibration": result.calibration, "settings": asdict(protocol)},
        "baseline": baseline.as_dict(),
        "compressed": after.as_dict(),
        "compress_seconds": result.seconds,
        "peak_rss_bytes": result.peak_rss_bytes,
        "layers": result.layers,
    }
    if out is not None:
        save(result, out, overwrite=overwrite, format=storage_format)
        shutil.rmtree(checkpoints, ignore_errors=True)
    return result


def _checkpoint_dir(out: str | os.PathLike | None) -> Path | None:
    """Per-output checkpoint folder in the cache, so an interrupted job resumes when rerun."""
    if out is None:
        return None
    key = hashlib.sha256(str(Path(out).expanduser().resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "checkpoints" / key


def _refuse_input_as_output(source: str, out: str | os.PathLike) -> None:
    src = Path(source).expanduser()
    if src.exists() and src.resolve() == Path(out).expanduser().resolve():
        raise OutputExistsError(f"--out '{out}' is the input model; choose another folder")
