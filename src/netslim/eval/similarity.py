"""Word and document similarity benchmarks of sentence encoders: Lee50, WordSim353, SimLex-999.

Protocol (the one behind the reference scores of all-MiniLM-L6-v2 in ``ASSETS.md``):

- embeddings: the mean of the encoder's last hidden state over the non-padding tokens
  ([CLS] and [SEP] included), as sentence-transformers' mean pooling; texts truncated to
  ``max_length`` tokens (256, the model's ``max_seq_length``); similarity = cosine.
- Lee50 (Lee, Pincombe and Welsh 2005): 50 news documents (``lee.cor``, latin-1, one per
  line) and the human similarity matrix ``similarities0-1.txt`` (mean ratings scaled to
  [0, 1], upper triangle filled). Score: Pearson correlation between model and human
  similarities over the 1225 pairs above the diagonal.
- WordSim353 (Finkelstein et al. 2002, ``wordsim353.tsv``) and SimLex-999 (Hill et al. 2015,
  ``simlex999.txt``): each word embedded alone as a text. Score: Spearman correlation (ties
  get their average rank) between cosine and human score over all pairs.

The data files ship in the ``gensim`` wheel (``gensim/test/test_data/``); they are read
directly, without importing gensim.

Example:
    >>> tokenizer = AutoTokenizer.from_pretrained(folder); model = AutoModel.from_pretrained(folder)
    >>> evaluate_similarity(model, tokenizer)
    {'lee50': 0.656, 'wordsim353': 0.729, 'simlex999': 0.446}
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from netslim.errors import ConfigError, DataNotFoundError, did_you_mean

TASKS = ("lee50", "wordsim353", "simlex999")
WORD_PAIR_FILES = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt"}


def gensim_test_data() -> Path:
    """The ``gensim/test/test_data`` folder of the installed gensim wheel (gensim is not imported).

    Raises:
        DataNotFoundError: if gensim is not installed.
    """
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError("the similarity benchmarks read gensim's test data: pip install gensim")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def _data_file(name: str) -> Path:
    path = gensim_test_data() / name
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing from the gensim wheel: pip install --force-reinstall gensim")
    return path


def load_lee50() -> tuple[list[str], np.ndarray]:
    """The 50 Lee documents and the (50, 50) human similarity matrix (upper triangle used)."""
    docs = [line.strip() for line in _data_file("lee.cor").read_text(encoding="latin-1").splitlines() if line.strip()]
    human = np.loadtxt(_data_file("similarities0-1.txt"))
    if len(docs) != 50 or human.shape != (50, 50):
        raise DataNotFoundError(f"unexpected Lee50 data in {gensim_test_data()}: {len(docs)} docs, matrix {human.shape}")
    return docs, human


def load_word_pairs(task: str) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Word pairs and human scores of ``wordsim353`` or ``simlex999`` (lines ``w1<TAB>w2<TAB>score``)."""
    if task not in WORD_PAIR_FILES:
        hint = did_you_mean(task, WORD_PAIR_FILES)
        raise ConfigError(f"unknown word-pair task '{task}'; choose from {sorted(WORD_PAIR_FILES)}{hint}")
    pairs, scores = [], []
    for line in _data_file(WORD_PAIR_FILES[task]).read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if line.startswith("#") or len(fields) != 3:
            continue
        pairs.append((fields[0], fields[1]))
        scores.append(float(fields[2]))
    return pairs, np.asarray(scores)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (batch, tokens, dim) over the positions where ``mask`` (batch, tokens) is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)


@torch.inference_mode()
def encode(model: nn.Module, tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 256) -> torch.Tensor:
    """Mean-pooled embeddings (len(texts), dim) of the encoder's last hidden state.

    Texts are batched by length (padding does not change the result, it only costs time).
    """
    if not texts:
        raise ConfigError("encode needs at least one text")
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    pieces = []
    for start in range(0, len(order), batch_size):
        batch = [texts[i] for i in order[start : start + batch_size]]
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        pieces.append(mean_pool(hidden, enc["attention_mask"]).float().cpu())
    return torch.cat(pieces)[torch.argsort(torch.tensor(order))]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks starting at 1, tied values sharing their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def pearson(x, y) -> float:
    """Pearson correlation of two equally long sequences."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks, as ``scipy.stats.spearmanr``)."""
    return pearson(_ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64)))


def cosine_matrix(embeddings: torch.Tensor) -> np.ndarray:
    """All pairwise cosine similarities (n, n) of the rows of ``embeddings``."""
    unit = torch.nn.functional.normalize(embeddings.double(), dim=-1)
    return (unit @ unit.T).numpy()


def lee50_score(embeddings: torch.Tensor, human: np.ndarray) -> float:
    """Pearson correlation of model and human similarities over the pairs above the diagonal."""
    upper = np.triu_indices(len(human), 1)
    return pearson(cosine_matrix(embeddings)[upper], human[upper])


def word_pairs_score(vectors: dict[str, torch.Tensor], pairs: list[tuple[str, str]], human: np.ndarray) -> float:
    """Spearman correlation of the cosine of each pair's word vectors with the human scores."""
    left = torch.stack([vectors[a] for a, _ in pairs]).double()
    right = torch.stack([vectors[b] for _, b in pairs]).double()
    cosines = torch.nn.functional.cosine_similarity(left, right, dim=-1).numpy()
    return spearman(cosines, human)


def evaluate_similarity(
    model: nn.Module, tokenizer, tasks: tuple[str, ...] = TASKS, max_length: int = 256
) -> dict[str, float]:
    """Scores of ``model`` on each of ``tasks`` (see the module docstring for the protocol).

    Raises:
        ConfigError: for an unknown task name.
        DataNotFoundError: if gensim (which ships the data) is not installed.
    """
    for task in tasks:
        if task not in TASKS:
            raise ConfigError(f"unknown similarity task '{task}'; choose from {list(TASKS)}{did_you_mean(task, TASKS)}")
    scores = {}
    for task in tasks:
        if task == "lee50":
            docs, human = load_lee50()
            scores[task] = lee50_score(encode(model, tokenizer, docs, max_length=max_length), human)
            continue
        pairs, human = load_word_pairs(task)
        words = sorted({w for pair in pairs for w in pair})
        vectors = dict(zip(words, encode(model, tokenizer, words, batch_size=128, max_length=max_length)))
        scores[task] = word_pairs_score(vectors, pairs, human)
    return scores


def sentence_pairs(count: int) -> tuple[list[str], list[str]]:
    """First and second sentence of the first ``count`` usable documents of Lee's background corpus.

    ``lee_background.cor`` (300 news articles, in gensim's test data) does not overlap the 50
    Lee50 test documents, so it serves as calibration text for the encoder.
    """
    text = _data_file("lee_background.cor").read_text(encoding="latin-1")
    firsts, seconds = [], []
    for doc in text.splitlines():
        parts = [s.strip() for s in doc.split(". ") if len(s.split()) > 3]
        if len(parts) >= 2:
            firsts.append(parts[0])
            seconds.append(parts[1])
    return firsts[:count], seconds[:count]


def contrastive_loss(tokenizer, firsts: list[str], seconds: list[str], scale: float = 20.0):
    """``loss_fn(model)``: in-batch-negatives InfoNCE of sentence pairs (a sentence and the next).

    The objective sentence encoders such as all-MiniLM-L6-v2 were trained with; its gradients
    serve the ``taylor`` importance criterion.
    """
    a = tokenizer(firsts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    b = tokenizer(seconds, padding=True, truncation=True, max_length=128, return_tensors="pt")

    def loss_fn(model: nn.Module) -> torch.Tensor:
        ea = F.normalize(mean_pool(model(**a).last_hidden_state, a["attention_mask"]), dim=-1)
        eb = F.normalize(mean_pool(model(**b).last_hidden_state, b["attention_mask"]), dim=-1)
        return F.cross_entropy(scale * ea @ eb.T, torch.arange(len(firsts)))

    return loss_fn
