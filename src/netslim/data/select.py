"""Choosing which token windows to calibrate or recover on, and keeping the evaluation text out.

- :func:`dsir_select`: importance resampling toward a target text (Xie et al., "Data Selection
  for Language Models via Importance Resampling", 2023, https://arxiv.org/abs/2302.03169).
  Each window is a bag of hashed unigram and bigram features; a smoothed multinomial over the
  buckets is fitted to the target text and another to the pool, and a window's log importance
  weight is the sum, over its features, of ``log p_target - log p_pool``. Windows are drawn
  without replacement in proportion to their weights (Gumbel top-k, seeded).
- :func:`paser_select`: the windows whose loss rose most after compression, spread over
  clusters (after Zhao et al., "PASER: Post-Training Data Selection for Efficient Pruned Large
  Language Model Recovery", 2025, https://arxiv.org/abs/2502.12594). The pool is clustered by
  k-means on its normalized n-gram features (PASER clusters sentence embeddings; a hashed
  n-gram bag needs no second model), each cluster receives a share of the budget in
  proportion to its mean loss increase (how much of that kind of text the compression broke;
  every cluster gets at least a tenth of the average share),
  and inside a cluster the windows that rose most are taken first.
- :func:`check_disjoint`: refuses text whose passages share long runs of words (13, as in GPT-3's
  decontamination) with the evaluation text, so recovery and calibration never see what the
  model is scored on. Words, not token ids: the check does not depend on the tokenizer.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from netslim.data.sources import TextSource
from netslim.errors import ConfigError

BUCKETS = 1 << 14  # hashed feature buckets (DSIR uses 10k; a power of two keeps the hash a mask)
OVERLAP_N = 13  # words per run in the contamination check (as in GPT-3's decontamination)
# the largest fraction of a passage's 13-word runs that may also occur in the held-out text (a
# copied passage is near 100%; WikiText-2 valid against test peaks at 0.3%)
MAX_OVERLAP = 0.5

_P1, _P2 = 1_000_003, 998_244_353  # odd multipliers of the feature hash


def ngram_features(ids: torch.Tensor, buckets: int = BUCKETS) -> torch.Tensor:
    """(windows, buckets) counts of each window's hashed unigrams and bigrams of token ids."""
    ids = ids.long()
    uni = (ids * _P1) % buckets
    bi = ((ids[:, :-1] * _P1 + ids[:, 1:] * _P2 + 1) % buckets)
    features = torch.zeros(ids.shape[0], buckets)
    features.scatter_add_(1, uni, torch.ones_like(uni, dtype=torch.float32))
    features.scatter_add_(1, bi, torch.ones_like(bi, dtype=torch.float32))
    return features


def _gumbel_top(log_weights: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(log_weights.shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    keys = log_weights.double() - torch.log(-torch.log(u))
    return keys.topk(count).indices.sort().values


def _check_count(count: int, pool: int) -> None:
    if not 1 <= count <= pool:
        raise ConfigError(f"cannot select {count} windows from a pool of {pool}; choose between 1 and {pool}")


def dsir_weights(pool: torch.Tensor, target: torch.Tensor, buckets: int = BUCKETS) -> torch.Tensor:
    """Log importance weight of each pool window (rows of ``pool`` ids) toward ``target`` ids.

    Both multinomials are add-one smoothed over the buckets.
    """
    features = ngram_features(pool, buckets)
    target_counts = ngram_features(target.reshape(1, -1), buckets)[0]
    log_target = torch.log((target_counts + 1) / (target_counts.sum() + buckets))
    pool_counts = features.sum(0)
    log_pool = torch.log((pool_counts + 1) / (pool_counts.sum() + buckets))
    return features @ (log_target - log_pool)


def dsir_select(pool: torch.Tensor, target: torch.Tensor, count: int, seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of ``count`` pool windows resampled toward the ``target`` token ids."""
    _check_count(count, pool.shape[0])
    return _gumbel_top(dsir_weights(pool, target), count, seed)


def _kmeans(points: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    from scipy.cluster.vq import kmeans2  # noqa: PLC0415  (scipy loads on use)

    _, labels = kmeans2(points, clusters, seed=seed, minit="++")
    return labels


SELECTIONS = ("random", "dsir", "paser")


def calibration_selection(select: str | None, target: str | None, drafted: bool) -> str:
    """The calibration selection that ``select`` and ``target`` ask for (``dsir`` when only a
    target is given), refused with what to change when it cannot run.

    Args:
        drafted: Whether a recipe is at hand for ``paser``'s draft compression.
    """
    select = select or ("dsir" if target is not None else "random")
    if select not in SELECTIONS:
        raise ConfigError(f"calibration selection {select!r} is unknown; use random, dsir or paser")
    if select == "dsir" and target is None:
        raise ConfigError("calibration by dsir resamples toward a target text: give it (--calib-target FILE, "
                          "or target= in Python)")
    if select != "dsir" and target is not None:
        raise ConfigError(f"a calibration target is the text dsir resamples toward; with {select} selection drop it")
    if select == "paser" and not drafted:
        raise ConfigError("calibration by paser keeps the windows a draft compression hurt most: give recipe=")
    return select


def paser_select(pool: torch.Tensor, loss_rise: torch.Tensor, count: int, clusters: int = 8,
                 seed: int = 0) -> torch.Tensor:
    """Indices (sorted) of ``count`` pool windows chosen by their loss increase, cluster by cluster.

    Args:
        pool: (windows, seqlen) token ids.
        loss_rise: (windows,) mean token loss of the compressed model minus the dense model's.
        clusters: k-means clusters of the pool (fewer when the pool is small).
    """
    _check_count(count, pool.shape[0])
    features = ngram_features(pool)
    features = torch.log1p(features)
    features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = max(1, min(clusters, pool.shape[0] // 2))
    labels = torch.from_numpy(_kmeans(features.numpy().astype(np.float64), k, seed)).long()
    rise = loss_rise.double()
    members = [torch.nonzero(labels == c).flatten() for c in range(k)]
    members = [m[rise[m].argsort(descending=True)] for m in members if m.numel()]
    # budget shares in proportion to each cluster's mean rise (negative counts as none), with a floor
    # of a tenth of the average so that no kind of text is left out; by largest remainder
    means = torch.stack([rise[m].mean() for m in members]).clamp_min(0)
    weights = means + 0.1 * means.mean() + 1e-9
    quota = weights / weights.sum() * count
    take = torch.minimum(quota.floor().long(), torch.tensor([m.numel() for m in members]))
    while int(take.sum()) < count:  # hand out what is left to the largest remainders that have room
        room = torch.tensor([m.numel() for m in members]) - take
        remainder = torch.where(room > 0, quota - take, torch.tensor(-1e30, dtype=quota.dtype))
        take[int(remainder.argmax())] += 1
    chosen = torch.cat([m[:n] for m, n in zip(members, take.tolist())])
    return chosen.sort().values


_WORD = re.compile(r"[^\W_]+")  # runs of letters and digits: punctuation and markup do not count


def _word_ids(texts: list[str], vocabulary: dict[str, int]) -> list[np.ndarray]:
    """Each text as ids of its lower-cased words, so the raw and the tokenized release of a text
    ("1,000 people, said" and "1 @,@ 000 people , said") read the same."""
    return [np.array([vocabulary.setdefault(w, len(vocabulary)) for w in _WORD.findall(t.lower())], dtype=np.uint64)
            for t in texts]


def _ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """uint64 hashes of every length-``n`` run of ``ids`` (1-D), by a polynomial rolling sum."""
    if ids.size < n:
        return np.zeros(0, dtype=np.uint64)
    windows = np.lib.stride_tricks.sliding_window_view(ids, n)
    powers = np.power(np.uint64(1_000_003), np.arange(n, dtype=np.uint64))  # wraps mod 2**64 on purpose
    return (windows * powers).sum(axis=1, dtype=np.uint64)


def _runs_seen(pieces: list[np.ndarray], seen: np.ndarray, n: int) -> tuple[int, int]:
    """(runs of ``n`` words inside the pieces that occur in ``seen``, all runs inside the pieces).
    A piece's first and last word are left out: a window cut from a text may start and end inside words."""
    grams = [g for g in (_ngram_hashes(p[1:-1], n) for p in pieces) if g.size]
    if not grams or seen.size == 0:
        return 0, sum(g.size for g in grams)
    grams = np.concatenate(grams)
    where = np.searchsorted(seen, grams).clip(max=seen.size - 1)
    return int((seen[where] == grams).sum()), int(grams.size)


def _seen(held_out: str, vocabulary: dict[str, int], n: int) -> np.ndarray:
    (held,) = _word_ids([held_out], vocabulary)
    return np.unique(_ngram_hashes(held, n))


def overlap_fractions(texts: list[str], held_out: str, n: int = OVERLAP_N) -> torch.Tensor:
    """For each text, the fraction of its ``n``-word runs (lower-cased letters and digits) that occur in ``held_out``."""
    vocabulary: dict[str, int] = {}
    seen = _seen(held_out, vocabulary, n)
    fractions = []
    for ids in _word_ids(texts, vocabulary):
        hit, total = _runs_seen([ids], seen, n)
        fractions.append(hit / total if total else 0.0)
    return torch.tensor(fractions)


def check_disjoint(texts: list[str], held_out: TextSource, what: str, words: int = 400) -> None:
    """Refuse ``texts`` (a text, or decoded windows) when a passage of about ``words`` words
    shares more than half of its 13-word runs with the held-out text.

    A long text is read in passages of ``words`` words; short windows are pooled, one after
    another, until they hold that many (a window of a few dozen words holds too few runs to
    judge alone). Runs never cross from one window into the next.

    Raises:
        ConfigError: naming the passage, the share and what to change.
    """
    vocabulary: dict[str, int] = {}
    seen = _seen(held_out.text, vocabulary, OVERLAP_N)
    passages: list[list[np.ndarray]] = [[]]
    size = 0
    for ids in _word_ids(texts, vocabulary):
        for start in range(0, len(ids), words):
            piece = ids[start:start + words]
            passages[-1].append(piece)
            size += len(piece)
            if size >= words:
                passages.append([])
                size = 0
    for index, pieces in enumerate(p for p in passages if p):
        hit, total = _runs_seen(pieces, seen, OVERLAP_N)
        if total and hit / total > MAX_OVERLAP:
            raise ConfigError(
                f"the {what} text overlaps the evaluation text {held_out.name}: its passage {index} ({words} words) "
                f"shares {hit / total:.0%} of its {OVERLAP_N}-word runs with it; use text the model is not scored on "
                "(e.g. wikitext2:valid against wikitext2:test)")
