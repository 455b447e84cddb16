"""PCA bases and weight rotation: known answers and exact invariances."""

import torch

from netslim.ops.rotation import gram, pca_basis, rotate_input, rotate_output, sliced_width


def test_gram_matches_float64_product_on_3d_input():
    x = torch.randn(3, 50, 8, generator=torch.Generator().manual_seed(0))
    flat = x.reshape(-1, 8).double()
    assert torch.allclose(gram(x, chunk=7), flat.t() @ flat, atol=1e-4)


def test_pca_basis_is_orthogonal_and_sorted_and_finds_the_dominant_axis():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 6, generator=g) * torch.tensor([0.1, 0.2, 5.0, 0.3, 1.0, 0.05])
    values, q = pca_basis(gram(x), damp=0.0)
    assert torch.allclose(q.t() @ q, torch.eye(6, dtype=q.dtype), atol=1e-10)
    assert bool((values[:-1] >= values[1:]).all())
    assert abs(float(q[2, 0].abs()) - 1.0) < 1e-3  # the largest-variance axis comes first
    assert abs(float(q[4, 1].abs()) - 1.0) < 1e-3


def test_damping_keeps_a_rank_deficient_gram_well_defined():
    x = torch.randn(100, 4).double()
    x[:, 3] = 0.0
    values, q = pca_basis(gram(x), damp=0.01)
    assert float(values[-1]) > 0
    assert abs(float(q[3, -1].abs()) - 1.0) < 1e-6


def test_rotating_reader_and_writer_preserves_the_function():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    reader = torch.randn(3, 8, generator=g, dtype=torch.float64)
    writer = torch.randn(8, 4, generator=g, dtype=torch.float64)
    h = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.allclose((x @ q) @ rotate_input(reader, q).t(), x @ reader.t())
    assert torch.allclose(h @ rotate_output(writer, q).t(), (h @ writer.t()) @ q)


def test_sliced_width_rounds_down_to_multiple_and_never_to_zero():
    assert sliced_width(576, 0.25, 8) == 432
    assert sliced_width(576, 0.3, 8) == 400  # 403.2 -> 403 -> 400
    assert sliced_width(64, 0.0, 8) == 64
    assert sliced_width(64, 0.99, 8) == 8
