"""The Python API: ``compress``, ``evaluate``, ``calibration`` (and ``save``/``load`` in export).

Example:
    >>> import netslim
    >>> lm = netslim.load_model("smollm2-135m")
    >>> result = netslim.compress(lm, netslim.WandaConfig(sparsity=0.5, pattern="2:4"))
    >>> netslim.evaluate(result.model, lm.tokenizer).ppl
"""

from __future__ import annotations

import copy
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netslim.data.select import calibration_selection, check_disjoint, dsir_select, paser_select
from netslim.data.sources import TextSource, resolve_text
from netslim.data.windows import TokenWindows, calibration_windows, evaluation_windows, tokenize
from netslim.engine.execution import check_batch_size
from netslim.engine.records import LayerRecord, RunLog
from netslim.engine.residency import IN_MEMORY, Residency
from netslim.engine.sequential import run_stages
from netslim.errors import ConfigError, NetslimError
from netslim.eval.perplexity import Perplexity, perplexity
from netslim.eval.report import Report
from netslim.eval.size import ModelSize, model_size
from netslim.graph.plan import SlimPlan
from netslim.methods.base import MethodConfig, Scope
from netslim.methods.preflight import check_recipe, check_seqlen, model_shape
from netslim.models.adapter import ModelAdapter
from netslim.models.loading import LoadedModel, load_model
from netslim.recipe import RecipeLike, parse_recipe
from netslim.recovery.teacher import window_losses


@dataclass
class CompressionResult:
    """What :func:`compress` returns.

    Attributes:
        model: The compressed model (the input model, modified in place).
        tokenizer: Its tokenizer, when known.
        recipe: The stages that were applied, resolved: model-wide choices their planning made
            (per-block sparsities, ranks, removal counts, removed blocks) spelled out, so
            that replaying them on the original model gives the same weights.
        layers: One :class:`~netslim.engine.records.LayerRecord` per compressed module: what
            each stage decided for it (also readable like a dict: ``record["bits"]``).
        calibration: Provenance of the calibration windows, or ``None`` when data-free.
        seconds: Wall time of the compression (a resumed run counts its earlier runs' restored blocks too).
        peak_rss_bytes: Peak resident memory of the process so far.
        source: Where the model came from.
        report: The typed report, when a job evaluated before and after.
        plan: The channel cuts of a graph-pruned vision or encoder model (replayable on the
            zoo model; ``None`` for causal LMs).
        recovery: One summary per ``recover`` stage (mode, windows, steps, tokens, losses, seconds).
    """

    model: nn.Module
    tokenizer: Any
    recipe: list[MethodConfig]
    layers: list[LayerRecord]
    calibration: dict | None
    seconds: float
    peak_rss_bytes: int
    source: str = "in-memory model"
    report: Report | None = field(default=None)
    plan: SlimPlan | None = None
    recovery: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns: perplexity under its protocol, and the model's size."""

    perplexity: Perplexity
    size: ModelSize

    @property
    def ppl(self) -> float:
        """The perplexity."""
        return self.perplexity.ppl

    def as_dict(self) -> dict:
        """``ppl``, ``params``, ``nonzero_params``, ``size_bytes``."""
        return {"ppl": self.ppl, **self.size.as_dict()}


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _unpack(model: nn.Module | LoadedModel | str, tokenizer: Any) -> tuple[nn.Module, Any, str]:
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if isinstance(model, LoadedModel):
        return model.model, tokenizer or model.tokenizer, model.source
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a transformers causal LM, a LoadedModel or a model source string, "
                          f"got {type(model).__name__}")
    return model, tokenizer, "in-memory model"


def _no_tokenizer(task: str, source: str) -> ConfigError:
    if source == "in-memory model":
        return ConfigError(f"{task} needs a tokenizer; pass tokenizer=")
    return ConfigError(f"{task} needs a tokenizer, and model '{source}' has none: add its tokenizer files to the folder")


def check_finite(model: nn.Module, what: str = "the model") -> None:
    """Refuse a model with NaN or infinite weights, naming the first such tensor.

    Raises:
        NetslimError: with the tensor's name.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NetslimError(f"{what} has NaN or infinite values in '{name}'; netslim needs finite weights")


def bos_id(model: nn.Module, tokenizer: Any) -> int | None:
    """The BOS id to start every window with, or ``None`` if the family does not want one."""
    if not ModelAdapter.from_model(model).spec.bos_per_window:
        return None
    token = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else None
    return token if token is not None else getattr(model.config, "bos_token_id", None)


PASER_POOL = 4  # select=paser scores this many candidate windows per calibration window


def calibration(
    model: nn.Module | LoadedModel,
    tokenizer: Any = None,
    source: str = "wikitext2:valid",
    windows: int = 64,
    seqlen: int = 512,
    seed: int = 0,
    target: str | None = None,
    select: str | None = None,
    recipe: RecipeLike | None = None,
    progress: bool = False,
) -> TokenWindows:
    """Calibration windows from a text file or ``wikitext2:valid``: seeded random ones, or chosen.

    Args:
        select: ``random`` (the default), ``dsir`` (the default when ``target`` is given) or
            ``paser``.

            - ``dsir``: the windows are drawn, without replacement, from the non-overlapping
              windows of ``source`` by DSIR importance weights toward ``target``
              (:func:`netslim.data.select.dsir_select`), e.g. to calibrate on the part of a
              general text that looks like the user's domain.
            - ``paser``: a draft of ``recipe`` (its calibrated stages, on random windows) runs on
              a copy of the model, and the windows are the ones, among ``4 * windows``
              candidates, whose loss it raised most, spread over n-gram clusters
              (:func:`netslim.data.select.paser_select`). It costs a second compression and
              a second copy of the model in memory.
        target: The text ``dsir`` resamples toward.
        recipe: The compression ``paser`` drafts.
    """
    select = calibration_selection(select, target, recipe is not None)
    model, tokenizer, origin = _unpack(model, tokenizer)
    if tokenizer is None:
        raise _no_tokenizer("building calibration windows from text", origin)
    check_seqlen(model.config, seqlen)
    text = resolve_text(source, default_split="valid")
    ids, bos = tokenize(tokenizer, text.text), bos_id(model, tokenizer)
    if select == "random":
        return calibration_windows(ids, seqlen, windows, seed, bos, text.name)
    pool = evaluation_windows(ids, seqlen, None, bos, text.name)
    if select == "dsir":
        goal = resolve_text(target, default_split="valid")
        chosen = dsir_select(pool.ids, tokenize(tokenizer, goal.text), windows, seed)
        return TokenWindows(pool.ids[chosen], f"{text.name} (DSIR toward {goal.name})", seqlen, seed, bos is not None)
    stages = [stage for stage in parse_recipe(recipe) if stage.scope is not Scope.MODEL]
    candidates = pool.ids[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))
                          [:min(len(pool), PASER_POOL * windows)]]
    draft = copy.deepcopy(model)
    compress(draft, stages, calibration_windows(ids, seqlen, windows, seed, bos, text.name), progress=progress)
    rise = window_losses(draft, candidates, progress, "draft loss") - window_losses(model, candidates, progress,
                                                                                      "dense loss")
    del draft
    chosen = paser_select(candidates, rise, windows, seed=seed)
    names = "+".join(stage.method for stage in stages)
    return TokenWindows(candidates[chosen], f"{text.name} (PASER after a {names} draft)", seqlen, seed,
                        bos is not None)


def compress(
    model: nn.Module | LoadedModel | str,
    recipe: RecipeLike,
    calibration: TokenWindows | torch.Tensor | None = None,
    *,
    tokenizer: Any = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    held_out: str | TextSource | None = None,
    batch_size: int = 1,
    residency: Residency = IN_MEMORY,
) -> CompressionResult:
    """Compress ``model`` in place with the stages of ``recipe``.

    Args:
        model: A ``transformers`` causal LM, a :class:`LoadedModel`, or a source for
            :func:`load_model`.
        recipe: A config, a stage mapping, or a list of them.
        calibration: Token windows (a :class:`TokenWindows` or an (N, seqlen) id tensor).
            When ``None`` and a stage needs data, 64 windows of 512 tokens of WikiText-2 valid
            with seed 0 are drawn.
        tokenizer: Needed only to draw the default calibration data from an ``nn.Module``.
        progress: Show a progress bar per pass.
        checkpoint_dir: Folder for per-block checkpoints; calling again with the same model,
            recipe, calibration data and folder resumes after the last finished block
            (``seconds`` then includes the time earlier runs spent on the restored blocks).
        held_out: The text the model will be evaluated on (a source such as
            ``wikitext2:test``): calibration and recovery windows that share
            long runs of words with it are refused (:func:`netslim.data.select.check_disjoint`).
        batch_size: Calibration windows per block forward.
        residency: Where the blocks' weights are between uses; ``--offload`` streams them
            from the checkpoint (:mod:`netslim.offload`).

    The model is compressed where it lies (move it to a GPU first to compress there) and in
    its own dtype; the statistics are accumulated in float32 whatever that dtype is.

    Model-scope stages (``recover``) run between the engine's passes; their data is prepared
    on the model as given, before the first stage (the dense teacher's outputs are cached then).
    """
    stages = parse_recipe(recipe)
    check_batch_size(batch_size)
    module, tokenizer, source = _unpack(model, tokenizer)
    adapter = ModelAdapter.from_model(module)
    check_recipe(stages, model_shape(adapter))  # a chain that cannot run fails before any work
    windows = _calibration_windows(module, tokenizer, stages, calibration)
    held = _held_out(held_out)
    if held is not None and windows is not None:
        if tokenizer is None:
            raise _no_tokenizer("checking calibration windows against the held-out text", source)
        check_disjoint(tokenizer.batch_decode(windows.ids, skip_special_tokens=True), held, "calibration")
    start = time.perf_counter()
    handlers = {i: cfg.handler() for i, cfg in enumerate(stages) if cfg.scope is Scope.MODEL}
    for i, handler in handlers.items():
        handler.prepare(stages[i], adapter, tokenizer, held, bos_id(module, tokenizer), progress)
    log, resolved, recovery, restored = RunLog(), [], [], 0.0
    for first, segment in _segments(stages):
        if segment[0].scope is Scope.MODEL:
            recovery.append(handlers[first].act_model(segment[0], adapter, log, checkpoint_dir, progress))
            resolved.append(segment[0])
            continue
        timing: dict[str, float] = {}
        run = run_stages(adapter, segment, windows, progress=progress, checkpoint_dir=checkpoint_dir, timing=timing,
                         batch_size=batch_size, residency=residency)
        log.merge(run.layers)
        resolved.extend(run.stages)
        restored += timing["restored_seconds"]
    return CompressionResult(
        model=module,
        tokenizer=tokenizer,
        recipe=resolved,
        layers=log.as_list(),
        calibration=windows.describe() if windows is not None else None,
        seconds=time.perf_counter() - start + restored,
        peak_rss_bytes=peak_rss_bytes(),
        source=source,
        recovery=recovery,
    )


def recover(
    model: nn.Module | LoadedModel | str,
    dense: nn.Module | LoadedModel | str | None,
    config: MethodConfig | dict | None = None,
    *,
    tokenizer: Any = None,
    held_out: str | TextSource | None = "wikitext2:test",
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
) -> dict:
    """Fine-tune an already compressed ``model`` in place, keeping its structure (a ``recover`` stage).

    Example:
        >>> netslim.compress(lm, {"method": "wanda", "ratio": 0.5, "pattern": "2:4"})
        >>> netslim.recover(lm, netslim.load_model("smollm2-135m"), {"method": "recover", "mode": "lora"})

    Args:
        dense: The uncompressed model, the teacher of ``kd`` and the reference of
            ``select=paser`` (``None`` for ``loss=ce`` with random or dsir selection).
        config: A :class:`~netslim.methods.recover.RecoverConfig` or its settings (default: LoRA, kd).
        held_out: The evaluation text the recovery windows must not overlap.

    Returns:
        The stage's summary (steps, tokens, selected windows, losses, seconds).
    """
    (cfg,) = parse_recipe(config if config is not None else {"method": "recover"})
    if cfg.scope is not Scope.MODEL:
        raise ConfigError(f"netslim.recover runs a recover stage, not {cfg.method}; use netslim.compress for that")
    module, tokenizer, _ = _unpack(model, tokenizer)
    adapter = ModelAdapter.from_model(module)
    check_recipe([cfg], model_shape(adapter))
    needs_dense = cfg.needs_teacher or cfg.select == "paser"
    if needs_dense and dense is None:
        raise ConfigError(f"recover with loss={cfg.loss}, select={cfg.select} needs the dense model: pass dense=")
    reference = ModelAdapter.from_model(_unpack(dense, tokenizer)[0]) if dense is not None else adapter
    held = _held_out(held_out)
    handler = cfg.handler()
    handler.prepare(cfg, reference, tokenizer, held, bos_id(module, tokenizer), progress)
    return handler.act_model(cfg, adapter, RunLog(), checkpoint_dir, progress)


def _segments(stages: list[MethodConfig]) -> list[tuple[int, list[MethodConfig]]]:
    """(index of the first stage, stages): runs of engine stages, and each model-scope stage alone."""
    segments: list[tuple[int, list[MethodConfig]]] = []
    for i, cfg in enumerate(stages):
        if cfg.scope is not Scope.MODEL and segments and segments[-1][1][0].scope is not Scope.MODEL:
            segments[-1][1].append(cfg)
        else:
            segments.append((i, [cfg]))
    return segments


def _held_out(held_out: str | TextSource | None) -> TextSource | None:
    if held_out is None or isinstance(held_out, TextSource):
        return held_out
    return resolve_text(held_out, default_split="test")


def _calibration_windows(model, tokenizer, stages, given) -> TokenWindows | None:
    if not any(stage.needs_calibration for stage in stages):
        return None
    if isinstance(given, TokenWindows):
        return given
    if isinstance(given, torch.Tensor):
        if given.dim() != 2 or given.shape[0] < 1 or given.shape[1] < 2:
            raise ConfigError(f"calibration ids must have shape (windows, seqlen >= 2), got {tuple(given.shape)}")
        if given.is_floating_point() or given.is_complex() or given.dtype == torch.bool:
            raise ConfigError(f"calibration ids must be an integer tensor of token ids, got {given.dtype}; "
                              "tokenize the text first (netslim.calibration)")
        vocab = model.get_input_embeddings().num_embeddings
        if int(given.min()) < 0 or int(given.max()) >= vocab:
            raise ConfigError(f"calibration ids must lie in [0, {vocab}) (the model's vocabulary), got "
                              f"{int(given.min())}..{int(given.max())}")
        check_seqlen(model.config, given.shape[1])
        return TokenWindows(given.long(), "token tensor", given.shape[1], None, False)
    if given is not None:
        raise ConfigError(f"calibration must be TokenWindows or an id tensor, got {type(given).__name__}")
    return calibration(model, tokenizer)


def evaluate(
    model: nn.Module | LoadedModel | str,
    tokenizer: Any = None,
    data: str | TokenWindows = "wikitext2:test",
    seqlen: int = 512,
    windows: int | None = 80,
    progress: bool = True,
    batch_size: int = 1,
) -> Evaluation:
    """Perplexity on non-overlapping windows (the first ``windows`` of ``data``) and model size.

    Args:
        data: A text file, ``wikitext2[:split]``, or ready :class:`TokenWindows`.
        windows: How many windows from the start of the text; ``None`` for all.
        batch_size: Windows per forward.
    """
    check_batch_size(batch_size)
    module, tokenizer, source = _unpack(model, tokenizer)
    check_finite(module, "the model" if source == "in-memory model" else f"model '{source}'")
    if not isinstance(data, TokenWindows):
        data = evaluation_data(module, tokenizer, data, seqlen, windows, source)
    return Evaluation(perplexity(module, data, progress=progress, batch_size=batch_size), model_size(module))


def evaluation_data(model: nn.Module, tokenizer: Any, data: str, seqlen: int = 512, windows: int | None = 80,
                    source: str = "in-memory model") -> TokenWindows:
    """The first ``windows`` non-overlapping windows of text ``data``, as :func:`evaluate` reads them."""
    if tokenizer is None:
        raise _no_tokenizer("evaluating on text", source)
    check_seqlen(model.config, seqlen)
    text = resolve_text(data, default_split="test")
    return evaluation_windows(tokenize(tokenizer, text.text), seqlen, windows, bos_id(model, tokenizer), text.name)


def export_gguf(
    model: nn.Module | LoadedModel | CompressionResult | str | os.PathLike,
    out: str | os.PathLike,
    type: str = "auto",  # noqa: A002  (the user-facing name, as --type)
    overwrite: bool = False,
    embeddings: str | None = None,
    head: str | None = None,
    importance: dict | None = None,
) -> dict:
    """Write ``model`` as one GGUF file for llama.cpp; return a summary (see :mod:`netslim.export.gguf`).

    Example:
        >>> result = netslim.compress(lm, netslim.GPTQConfig(bits=4, group_size=128, sym=True))
        >>> netslim.export_gguf(result, "q4.gguf")["tensors"][0]["type"]

    Args:
        model: A compression result, a loaded model, a causal LM, or a source string (a
            netslim output folder, a folder, a ``.gguf`` file, an alias, a hub id).
        out: The ``.gguf`` file to write (atomically).
        type: Float weights as ``f32``, ``f16``, ``bf16``, ``auto`` (f16) or a block type
            quantized by netslim's search: ``q8_0``, ``q6_k``, ``q5_k``, ``q5_1``, ``q5_0``,
            ``q4_k``, ``q4_1``, ``q4_0``, ``q3_k``; quantized layers are written in their exact
            GGUF block type where one exists.
        overwrite: Replace ``out`` if netslim exported it.
        embeddings: The token embedding's type (default: ``type``).
        head: The untied output head's type (default: ``type``).
        importance: ``{module name: (in_features,) tensor}`` weighting each layer's squared
            error per input channel (e.g. calibration mean ``x^2``).
    """
    from netslim.export.gguf import export_gguf as _export  # noqa: PLC0415  (imports gguf on use)

    return _export(model, out, type=type, overwrite=overwrite, embeddings=embeddings, head=head,
                   importance=importance)
