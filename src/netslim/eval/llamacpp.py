"""GGUF files run in llama.cpp, through ``llama-cpp-python`` (the optional extra ``netslim[llamacpp]``).

llama-cpp-python compiles llama.cpp from source when installed (about 10 minutes on 2 cores),
so netslim never depends on it: :func:`require` fails with one line saying how to install it.

- :class:`LlamaCppModel`: a loaded file; times a prefill and a greedy generation, as
  :mod:`netslim.eval.latency` does for PyTorch models.
- :func:`perplexity`: the perplexity llama.cpp computes on netslim's token windows (the same
  ids, fed as tokens: no second tokenizer is involved), one window per context, as
  :func:`netslim.eval.perplexity.perplexity` does.
- :func:`quantize`: llama.cpp's own quantizer (``llama_model_quantize``), for comparisons.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from netslim.data.windows import TokenWindows
from netslim.errors import NetslimError
from netslim.eval.perplexity import Perplexity

INSTALL_HINT = ("pip install 'netslim[llamacpp]' (it compiles llama.cpp from source: about 10 minutes on 2 cores)")
# llama.cpp's own quantizer presets (llama_ftype), by the names its `llama-quantize` tool uses
FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q3_K_S": 11, "Q3_K_M": 12,
          "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17, "Q6_K": 18}


def require():
    """The ``llama_cpp`` module, or a one-line :class:`NetslimError` saying how to install it."""
    try:
        import llama_cpp  # noqa: PLC0415
    except ImportError:
        raise NetslimError(f"the llama.cpp runtime needs llama-cpp-python: {INSTALL_HINT}") from None
    return llama_cpp


def available() -> bool:
    """Whether llama-cpp-python is installed."""
    try:
        require()
    except NetslimError:
        return False
    return True


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class LlamaCppModel:
    """One GGUF file loaded in llama.cpp, with ``threads`` threads for prefill and decode.

    Args:
        path: The ``.gguf`` file.
        threads: CPU threads (``n_threads`` and ``n_threads_batch``).
        n_ctx: Context length; also the batch size, so a prompt of up to ``n_ctx`` tokens is
            one forward.
        logits_all: Keep the logits of every position (perplexity) instead of the last one.
    """

    def __init__(self, path: str | Path, threads: int, n_ctx: int = 512, logits_all: bool = False):
        llama_cpp = require()
        self.path = Path(path)
        try:
            self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                       n_threads=threads, n_threads_batch=threads, logits_all=logits_all,
                                       verbose=False)
        except (ValueError, RuntimeError) as exc:  # llama.cpp refused the file; its log names why
            raise NetslimError(f"llama.cpp could not load '{path}': {exc}") from None
        self.threads, self.n_ctx = threads, n_ctx
        self.vocab_size = self.llm.n_vocab()

    def _check(self, tokens: int) -> None:
        if tokens > self.n_ctx:
            raise NetslimError(f"{tokens} tokens do not fit llama.cpp's context of {self.n_ctx}; use fewer")

    def prefill(self, ids: list[int]) -> float:
        """Seconds of one prefill of ``ids`` from an empty cache (logits of the last token only)."""
        self._check(len(ids))
        self.llm.reset()
        return _seconds(lambda: self.llm.eval(ids))

    def _next_token(self) -> int:
        llama_cpp = require()
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.vocab_size,))
        return int(logits.argmax())

    def generate(self, prompt: list[int], new_tokens: int) -> float:
        """Seconds of a prefill of ``prompt`` and greedy decoding of exactly ``new_tokens`` tokens."""
        self._check(len(prompt) + new_tokens)
        self.llm.reset()

        def run() -> None:
            self.llm.eval(prompt)
            for _ in range(new_tokens):
                self.llm.eval([self._next_token()])

        return _seconds(run)

    def window_nll(self, ids: list[int]) -> float:
        """Summed negative log-likelihood of tokens 2..n of ``ids`` given the ones before."""
        self._check(len(ids))
        self.llm.reset()
        self.llm.eval(ids)
        logits = np.asarray(self.llm.scores[: len(ids) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
        targets = np.asarray(ids[1:])
        return float((log_z - logits[np.arange(len(targets)), targets]).sum())

    def close(self) -> None:
        """Free llama.cpp's model and context."""
        self.llm.close()


def perplexity(path: str | Path, windows: TokenWindows, threads: int, progress: bool = True) -> Perplexity:
    """Perplexity of the GGUF file ``path`` in llama.cpp on ``windows`` (one window per context).

    Raises:
        NetslimError: llama-cpp-python missing, the file refused, or a vocabulary smaller than
            the windows' token ids (a file of another model).
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    model = LlamaCppModel(path, threads, n_ctx=windows.seqlen, logits_all=True)
    try:
        if int(windows.ids.max()) >= model.vocab_size:
            raise NetslimError(f"'{path}' has {model.vocab_size} tokens but the windows use ids up to "
                               f"{int(windows.ids.max())}: evaluate it on windows of its own tokenizer")
        total = 0.0
        for row in tqdm(windows.ids, desc="llama.cpp perplexity", unit="window", disable=not progress):
            total += model.window_nll(row.tolist())
    finally:
        model.close()
    tokens = len(windows) * (windows.seqlen - 1)
    mean = total / tokens
    return Perplexity(math.exp(mean) if mean < math.log(1e300) else math.inf, mean, tokens, windows)


def quantize(source: str | Path, out: str | Path, preset: str, threads: int) -> Path:
    """llama.cpp's own quantization of the GGUF file ``source`` (float weights) with ``preset``.

    Args:
        preset: One of :data:`FTYPES` (``Q4_0``, ``Q4_K_M``, ``Q3_K_M``, ...), as llama.cpp's
            ``llama-quantize`` tool names them.

    Raises:
        NetslimError: an unknown preset, or llama.cpp failed.
    """
    llama_cpp = require()
    if preset not in FTYPES:
        raise NetslimError(f"llama.cpp preset '{preset}': use one of {', '.join(FTYPES)}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[preset]
    params.nthread = threads
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0:
        raise NetslimError(f"llama.cpp could not quantize '{source}' to {preset} (status {status})")
    return Path(out)
