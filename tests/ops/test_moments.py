"""One statistics accumulator: the engine's input statistics, FLAP's moments, SliceGPT's Gram."""

import pytest
import torch

from netslim.engine.stats import InputStats, Stat
from netslim.ops.moments import Moments
from netslim.ops.rotation import gram


def _batches(width=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 5, width, generator=g) * 3 + 1, torch.randn(7, width, generator=g)]


def test_moments_reproduce_the_engine_input_statistics_bit_for_bit():
    acc, moments = InputStats(12, frozenset({Stat.ACT_NORM, Stat.HESSIAN})), Moments(12, gram=True)
    for x in _batches():
        acc.add(x)
        moments.add(x)
    stats = acc.view()
    assert moments.n_tokens == stats.n_tokens == 17
    assert torch.equal(moments.norm, stats.act_norm) and torch.equal(moments.sq_mean, stats.act_sq_mean)
    assert torch.equal(moments.xtx * (2.0 / moments.n_tokens), stats.hessian)


def test_moments_hold_only_what_was_asked():
    moments = Moments(4, squares=False)
    moments.add(torch.ones(3, 4))
    assert moments.sq_sum is None and moments.total is None and moments.xtx is None and moments.n_tokens == 3


def test_flap_moments_mean_norm_and_sample_variance_in_float64():
    x = torch.cat([b.reshape(-1, 12) for b in _batches()]).double()
    acc = InputStats(12, frozenset({Stat.MOMENTS}))
    for b in _batches():
        acc.add(b)
    stats = acc.view().moments
    assert stats.total.dtype == torch.float64 and stats.total.device.type == "cpu"
    assert torch.allclose(stats.mean, x.mean(0)) and torch.allclose(stats.norm, x.norm(dim=0))
    assert torch.allclose(stats.variance, x.var(0))


def test_chunked_gram_sums_float32_products_in_float64():
    x = torch.randn(3, 10, 16, generator=torch.Generator().manual_seed(1))
    flat = x.reshape(-1, 16)
    expected = sum((p.t() @ p).double() for p in flat.split(7))
    out = gram(x, chunk=7)
    assert out.dtype == torch.float64 and torch.equal(out, expected)


def test_gram_chunks_count_over_the_stream_so_any_split_gives_the_same_sum():
    """SliceGPT's Gram is gathered window by window by hooks; it equals the one of the whole signal."""
    x = torch.randn(5, 9, 16, generator=torch.Generator().manual_seed(2))
    acc = Moments(16, squares=False, gram=True, dtype=torch.float64, compute_dtype=torch.float32, chunk=7)
    for window in x:
        acc.add(window)
    assert torch.equal(acc.xtx, gram(x, chunk=7))
    acc.add(x[0])  # reading xtx early changes nothing: the chunks still count over the stream
    assert torch.equal(acc.xtx, gram(torch.cat([x, x[:1]]), chunk=7))


@pytest.mark.parametrize("width", [7, 256, 257, 600, 1536])
def test_gram_from_the_upper_blocks_is_the_full_product_and_exactly_symmetric(width):
    g = torch.Generator().manual_seed(width)
    parts = [torch.randn(n, width, generator=g) for n in (33, 512, 5)]
    acc = Moments(width, gram=True)
    acc.add(parts[0])
    early = acc.xtx.clone()  # reading between adds changes nothing
    for x in parts[1:]:
        acc.add(x)
    x = torch.cat(parts)
    torch.testing.assert_close(early, parts[0].t() @ parts[0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(acc.xtx, x.t() @ x, rtol=1e-5, atol=1e-3)
    assert torch.equal(acc.xtx, acc.xtx.t())
