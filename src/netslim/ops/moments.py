"""Running statistics of an activation stream: token count, sums, sums of squares, ``X^T X``.

One accumulator serves every method that reads calibration activations:

- the engine's per-layer input statistics (:mod:`netslim.engine.stats`: Wanda's and OWL's
  ``||X_j||``, the ``X^T X`` of GPTQ, SparseGPT and SVD-LLM), float32 on the block's device;
- the per-channel mean and variance of FLAP (``Stat.MOMENTS``), float64 on the CPU;
- SliceGPT's ``X^T X`` of a whole residual signal (``Stat.GRAM``, :func:`netslim.ops.rotation.gram`),
  products of chunks in float32 summed in float64.

Activations of any shape ``(..., width)`` are flattened to tokens. Nothing here sees a model.
"""

from __future__ import annotations

import torch


GRAM_BLOCK = 256  # X^T X is summed in column blocks this wide, only on and above the diagonal


def _add_upper_gram(xtx: torch.Tensor, x: torch.Tensor) -> None:
    """Add ``x^T x`` to the blocks of ``xtx`` on and above its block diagonal: about 60% of the
    products of one full ``addmm`` (X^T X is symmetric), 25-35% less time on 2 CPU cores for
    widths of 576 to 4096. :func:`_mirror_upper` fills the rest when it is read."""
    width = x.shape[1]
    for start in range(0, width, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, width)
        xtx[start:stop, start:].addmm_(x[:, start:stop].t(), x[:, start:])


def _mirror_upper(xtx: torch.Tensor) -> None:
    """Copy the upper triangle of ``xtx`` onto its lower one, in place: the blocks above the
    block diagonal onto those below it, and each diagonal block's own upper triangle (a BLAS
    product ``x^T x`` need not come out exactly symmetric)."""
    width = xtx.shape[0]
    for start in range(0, width, GRAM_BLOCK):
        stop = min(start + GRAM_BLOCK, width)
        block = xtx[start:stop, start:stop]
        block.copy_(block.triu() + block.triu(1).t())
        xtx[stop:, start:stop] = xtx[start:stop, stop:].t()


class Moments:
    """Accumulates the statistics it is asked for over calls of :meth:`add`.

    Args:
        width: Channels of the stream (its last dimension).
        mean: Keep the per-channel sum (:attr:`total`), for :attr:`mean` and :attr:`variance`.
        squares: Keep the per-channel sum of squares (:attr:`sq_sum`).
        gram: Keep ``X^T X`` (:attr:`xtx`), (width, width).
        dtype: Dtype of the sums.
        device: Where the sums live; activations are moved there.
        compute_dtype: Dtype the activations are cast to before the products (default
            ``dtype``).
        chunk: With a ``compute_dtype`` narrower than ``dtype``: ``X^T X`` is formed ``chunk``
            tokens at a time in ``compute_dtype`` and each product is summed in ``dtype``, so
            long streams keep the precision of the sum. Chunks are counted over the whole
            stream (rows are held until a chunk is full), so the result does not depend on
            how the stream is split into calls. ``None``: one fused ``addmm_`` per call.
    """

    def __init__(
        self,
        width: int,
        *,
        mean: bool = False,
        squares: bool = True,
        gram: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        compute_dtype: torch.dtype | None = None,
        chunk: int | None = None,
    ):
        self.n_tokens = 0
        self.device = torch.device(device)
        self.compute_dtype = dtype if compute_dtype is None else compute_dtype
        self.chunk = chunk
        zeros = {"dtype": dtype, "device": self.device}
        self.total = torch.zeros(width, **zeros) if mean else None
        self.sq_sum = torch.zeros(width, **zeros) if squares else None
        self._xtx = torch.zeros(width, width, **zeros) if gram else None
        self._pending: list[torch.Tensor] = []  # rows not yet in a full chunk of X^T X

    def add(self, x: torch.Tensor) -> None:
        """Add activations of shape (..., width)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.device, self.compute_dtype)
        self.n_tokens += x.shape[0]
        if self.total is not None:
            self.total += x.sum(0)
        if self.sq_sum is not None:
            self.sq_sum += x.square().sum(dim=0)
        if self._xtx is not None:
            if self.chunk is None:
                _add_upper_gram(self._xtx, x)
            else:
                self._pending.append(x)
                if sum(rows.shape[0] for rows in self._pending) >= self.chunk:
                    self._flush()

    def _flush(self) -> None:
        """Add the pending rows' whole chunks to ``X^T X``, chunks counted from the first row
        ever added, so the sum does not depend on how the stream was split into calls."""
        rows = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        keep = rows.shape[0] % self.chunk
        for part in rows[: rows.shape[0] - keep].split(self.chunk):
            self._xtx += (part.t() @ part).to(self._xtx.dtype)
        self._pending = [rows[rows.shape[0] - keep :]] if keep else []

    def sums(self) -> list[torch.Tensor | None]:
        """The accumulated sums (total, squares, ``X^T X``; ``None`` where not kept), every
        pending row added first: to be summed in place over processes."""
        if self._xtx is not None and self._pending:
            self._xtx, self._pending = self.xtx, []
        return [self.total, self.sq_sum, self._xtx]

    @property
    def xtx(self) -> torch.Tensor | None:
        """``X^T X`` of every row added so far (``None`` unless asked for with ``gram``); with
        ``chunk``, the rows of an unfinished chunk are added to a copy, so reading it early
        changes nothing."""
        if self._xtx is None:
            return None
        if self.chunk is None:
            _mirror_upper(self._xtx)
            return self._xtx
        if not self._pending:
            return self._xtx
        part = torch.cat(self._pending) if len(self._pending) > 1 else self._pending[0]
        return self._xtx + (part.t() @ part).to(self._xtx.dtype)

    @property
    def mean(self) -> torch.Tensor:
        """Mean of each channel over the tokens seen."""
        return self.total / max(self.n_tokens, 1)

    @property
    def sq_mean(self) -> torch.Tensor:
        """Mean of ``x^2`` per channel."""
        return self.sq_sum / max(self.n_tokens, 1)

    @property
    def norm(self) -> torch.Tensor:
        """L2 norm of each channel over the tokens seen."""
        return self.sq_sum.sqrt()

    @property
    def variance(self) -> torch.Tensor:
        """Sample variance of each channel (FLAP's fluctuation of the input)."""
        n = max(self.n_tokens, 2)
        return ((self.sq_sum - self.total.square() / n) / (n - 1)).clamp_min(0)
