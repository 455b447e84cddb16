"""``--offload``: compress and evaluate a causal LM that need not fit in memory, one block at a time.

The model is built on the meta device (:mod:`netslim.models.lazy`); of its token embedding only
the rows of the tokens in use are read, while the states entering block 0 are captured, and its
head a slice of the vocabulary at a time at the end.
One calibration pass of the engine then visits each decoder
block in turn; for each, this module's residency

1. reads the block from the checkpoint onto the compute device,
2. runs the dense evaluation states through it (the baseline, measured in the same pass),
3. lets the stages compress it,
4. rounds it to the stored values and writes it to its own file of the output folder
   (:class:`netslim.export.shards.PackedShards`),
5. runs the compressed evaluation states through it, and frees it.

After the last block, the final norm and head turn both sets of states into perplexities.
Peak memory is one block and a slice of the vocabulary, plus the calibration and evaluation
states;
the output folder is written shard by shard inside an atomic temporary folder. The weights are
those of the same job in memory: the engine's pass is the same one.

Limits: one pass of layer-wise stages (gptq, rtn, sparsegpt, wanda, magnitude, svd, asvd,
svd_llm, eora), the packed format, random or DSIR calibration windows, and no per-block
checkpoints (an interrupted run starts again).
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from netslim.api import CompressionResult, calibration, check_finite, compress, evaluation_data, peak_rss_bytes
from netslim.engine.capture import capture_block_inputs, run_block
from netslim.engine.execution import Execution
from netslim.engine.residency import Residency
from netslim.engine.sequential import check_streamable
from netslim.errors import ConfigError, NetslimError
from netslim.eval.perplexity import Perplexity, perplexity_from_hidden
from netslim.eval.report import Measurement, Report
from netslim.eval.size import ModelSize, model_size
from netslim.export.atomic import atomic_folder
from netslim.export.shards import PackedShards
from netslim.methods.base import MethodConfig
from netslim.methods.rtn import QuantizationConfig
from netslim.models.folder import LoadedModel
from netslim.models.lazy import LazyModel, open_lazy
from netslim.models.loading import checkpoint_folder
from netslim.recipe import recipe_data


def check_offload(stages: list[MethodConfig], calib_select: str | None, storage_format: str, out) -> None:
    """Refuse, before any work, what an offloaded job cannot do.

    Raises:
        ConfigError: one line naming what to leave out or change.
    """
    check_streamable(stages)
    if out is None:
        raise ConfigError("--offload writes each block as it is compressed; give an output folder")
    if storage_format == "dense":
        raise ConfigError("--offload writes the packed format block by block; use --format auto or packed")
    if calib_select == "paser":
        raise ConfigError("--calib-select paser drafts the compression on a copy of the whole model; use random "
                          "or dsir with --offload")


class StreamedBlocks(Residency):
    """Reads, measures, writes and frees each block as the engine's pass reaches it."""

    streams = True

    def __init__(self, lazy: LazyModel, evaluation, batch_size: int, writer: PackedShards):
        self.lazy, self.evaluation, self.batch_size, self.writer = lazy, evaluation, batch_size, writer
        self.rest = _outside_size(lazy)
        self.dense, self.calls = capture_block_inputs(lazy.adapter, evaluation.ids, batch_size=batch_size,
                                                      residency=self)
        self.compressed = self.dense.clone()
        self.sizes = {"dense": [], "compressed": []}
        self.loaded: set[int] = set()
        self.eval_seconds = 0.0  # spent on the evaluation states inside the pass, not compressing

    def load_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lazy.load_embeddings(ids)

    def unload_outside(self) -> None:
        self.lazy.unload_outside()

    def load(self, index: int) -> None:
        if index not in self.loaded:
            self.lazy.load_block(index)
            self.loaded.add(index)

    def unload(self, index: int) -> None:
        self.lazy.unload_block(index)
        self.loaded.discard(index)

    def before(self, index: int) -> None:
        started, block = time.perf_counter(), self.lazy.adapter.blocks[index]
        self.dense = run_block(block, self.dense, self.calls[index], self.batch_size)
        self.sizes["dense"].append(model_size(block))
        self.eval_seconds += time.perf_counter() - started

    def after(self, index: int) -> None:
        block = self.lazy.adapter.blocks[index]
        check_finite(block, f"block {index} after compression")
        self.writer.write_block(index)
        started = time.perf_counter()
        self.compressed = run_block(block, self.compressed, self.calls[index], self.batch_size)
        self.sizes["compressed"].append(model_size(block))
        self.eval_seconds += time.perf_counter() - started

    def perplexity(self, side: str) -> Perplexity:
        """The perplexity of the dense or the compressed model, once every block is done (the
        caller loads the final norm: :meth:`LazyModel.load_outside`); the head is read a slice
        of the vocabulary at a time."""
        lazy = self.lazy
        softcap = getattr(lazy.adapter.config, "final_logit_softcapping", None)
        hidden = self.dense if side == "dense" else self.compressed
        bias = lazy.adapter.lm_head.bias

        def head():
            for start, rows in lazy.read_rows(lazy.head_name):
                yield rows, None if bias is None else bias[start:start + rows.shape[0]]

        return perplexity_from_hidden(lazy.adapter.final_norm, head, hidden, self.evaluation, self.batch_size,
                                      softcap)

    def size(self, side: str) -> ModelSize:
        """Parameters, non-zero parameters and in-memory bytes of the dense or compressed model."""
        return _total([self.rest, *self.sizes[side]])


def offload_job(source: str, stages: list[MethodConfig], protocol, execution: Execution, out, overwrite: bool,
                progress: bool) -> CompressionResult:
    """Compress, evaluate and write ``source`` block by block; returns the result with its report.

    The caller has checked the recipe, the texts and the output folder (:func:`check_offload`).
    The returned model holds meta tensors in its blocks: the compressed model is the folder
    (``netslim.load(out)``).
    """
    folder = checkpoint_folder(source)
    lazy = open_lazy(folder, execution.torch_dtype, execution.torch_device(), source)
    if lazy.tokenizer is None:
        raise ConfigError(f"model '{source}' has no tokenizer; add its tokenizer files to the folder")
    lm = LoadedModel(lazy.model, lazy.tokenizer, source)
    evaluation = evaluation_data(lazy.model, lazy.tokenizer, protocol.eval, protocol.seqlen, protocol.eval_windows,
                                 source)
    windows = None
    if any(stage.needs_calibration for stage in stages):
        windows = calibration(lm, source=protocol.calib, windows=protocol.calib_windows, seqlen=protocol.seqlen,
                              seed=protocol.seed, target=protocol.calib_target, select=protocol.calib_select)
    quantizes = any(isinstance(stage, QuantizationConfig) for stage in stages)
    with atomic_folder(out, overwrite, inputs=[source, str(folder)]) as tmp:
        writer = PackedShards(lazy.model, tmp, quantizes)
        streamed = StreamedBlocks(lazy, evaluation, execution.batch_size, writer)
        started = time.perf_counter()
        result = compress(lm, stages, windows, progress=progress, held_out=protocol.eval,
                          batch_size=execution.batch_size, residency=streamed)
        result.seconds = time.perf_counter() - started - streamed.eval_seconds  # compressing alone, as in memory
        lazy.load_outside(matrices=False)  # the final norm, for the perplexities and the last shard
        baseline, after = streamed.perplexity("dense"), streamed.perplexity("compressed")
        if not torch.isfinite(torch.tensor(baseline.ppl)):
            raise NetslimError(f"model '{source}' has a non-finite perplexity ({baseline.ppl}) on {protocol.eval}")
        result.report = Report(
            kind="causal_lm",
            model=source,
            recipe=recipe_data(result.recipe),
            protocol={**baseline.protocol(), "calibration": result.calibration, "settings": asdict(protocol),
                      "execution": {**execution.describe(), "offload": True}},
            baseline=Measurement(ppl=baseline.ppl, **streamed.size("dense").as_dict()),
            compressed=Measurement(ppl=after.ppl, **streamed.size("compressed").as_dict()),
            compress_seconds=result.seconds,
            peak_rss_bytes=peak_rss_bytes(),
            layers=[record.as_dict() for record in result.layers],
        )
        writer.finish(result, {name: _rows_of(lazy, name) for name in lazy.matrices})
    return result


def _rows_of(lazy: LazyModel, name: str):
    return lambda: (rows for _, rows in lazy.read_rows(name))


def _outside_size(lazy: LazyModel) -> ModelSize:
    """Parameters, non-zero parameters and bytes of the tensors outside the blocks, the
    vocabulary matrices read a slice at a time."""
    lazy.load_outside(matrices=False)
    try:
        parts = [model_size(lazy.model)]  # what is loaded: norms, position embeddings, biases
    finally:
        lazy.unload_outside()
    for name in lazy.matrices:
        for _, rows in lazy.read_rows(name):
            parts.append(ModelSize(rows.numel(), int(torch.count_nonzero(rows)), rows.numel() * rows.element_size()))
    return _total(parts)


def _total(parts: list[ModelSize]) -> ModelSize:
    return ModelSize(*(sum(getattr(p, f) for p in parts) for f in ("params", "nonzero_params", "size_bytes")))
