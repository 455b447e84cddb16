"""Tokenized windows: non-overlapping for evaluation, seeded random for calibration."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from netslim.errors import ConfigError


@dataclass(frozen=True)
class TokenWindows:
    """A batch of equal-length token windows and how they were drawn.

    Attributes:
        ids: Token ids, shape (windows, seqlen).
        source: Name of the text they came from.
        seqlen: Tokens per window, BOS included.
        seed: Sampling seed (``None`` for sequential evaluation windows).
        bos: Whether each window starts with the BOS token.
    """

    ids: torch.Tensor
    source: str
    seqlen: int
    seed: int | None
    bos: bool

    def __len__(self) -> int:
        return self.ids.shape[0]

    def describe(self) -> dict:
        """Provenance for reports: source, windows, seqlen, seed, bos."""
        info = {k: v for k, v in asdict(self).items() if k != "ids"}
        info["windows"] = len(self)
        return info


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids of the whole text, without special tokens, as a 1-D tensor."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def _check(seqlen: int, windows: int | None) -> None:
    if seqlen < 2:
        raise ConfigError(f"seqlen={seqlen}: must be at least 2 tokens")
    if windows is not None and windows < 1:
        raise ConfigError(f"windows={windows}: must be at least 1")


def _with_bos(body: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    if bos_id is None:
        return body
    return torch.cat([torch.full((body.shape[0], 1), bos_id, dtype=body.dtype), body], dim=1)


def evaluation_windows(
    ids: torch.Tensor,
    seqlen: int,
    max_windows: int | None = None,
    bos_id: int | None = None,
    source: str = "text",
) -> TokenWindows:
    """Consecutive non-overlapping windows from the start of the text.

    With ``bos_id``, each window is BOS followed by ``seqlen - 1`` text tokens. The tail that
    does not fill a window is dropped, as in the reference evaluation scripts.

    Raises:
        ConfigError: if the text is shorter than one window.
    """
    _check(seqlen, max_windows)
    body = seqlen - (bos_id is not None)
    count = ids.numel() // body
    if max_windows is not None:
        count = min(count, max_windows)
    if count == 0:
        raise ConfigError(f"text of {ids.numel()} tokens is shorter than one window of {seqlen}")
    windows = _with_bos(ids[: count * body].view(count, body), bos_id)
    return TokenWindows(windows, source, seqlen, None, bos_id is not None)


def calibration_windows(
    ids: torch.Tensor,
    seqlen: int,
    windows: int,
    seed: int = 0,
    bos_id: int | None = None,
    source: str = "text",
) -> TokenWindows:
    """``windows`` windows starting at seeded random offsets, as in the SparseGPT/GPTQ loaders.

    Raises:
        ConfigError: if the text is shorter than one window.
    """
    _check(seqlen, windows)
    body = seqlen - (bos_id is not None)
    if ids.numel() <= body:
        raise ConfigError(f"text of {ids.numel()} tokens is shorter than one window of {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - body, (windows,), generator=generator)
    batch = torch.stack([ids[s : s + body] for s in starts.tolist()])
    return TokenWindows(_with_bos(batch, bos_id), source, seqlen, seed, bos_id is not None)
