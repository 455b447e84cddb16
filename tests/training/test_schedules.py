"""Known answers of the cubic schedule and the cosine drop fraction."""

import pytest

from netslim.training.schedules import cosine_fraction, cubic_sparsity


@pytest.mark.parametrize("frequency", [1, 7, 10, 100])
def test_cubic_starts_at_initial_ends_at_final_and_is_monotone(frequency):
    kw = dict(initial=0.1, final=0.85, begin_step=20, end_step=120, frequency=frequency)
    values = [cubic_sparsity(t, **kw) for t in range(0, 200)]
    assert values[0] == values[20] == 0.1
    assert values[120] == 0.85  # exactly, even when 100 is not a multiple of frequency
    assert all(v == 0.85 for v in values[120:])
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert all(v < 0.85 for v in values[:120])


def test_cubic_known_value_and_steps_only_on_the_grid():
    kw = dict(initial=0.0, final=0.8, begin_step=0, end_step=100, frequency=10)
    # half way: 0.8 * (1 - 0.5 ** 3) = 0.7
    assert cubic_sparsity(50, **kw) == pytest.approx(0.7)
    assert cubic_sparsity(59, **kw) == cubic_sparsity(50, **kw)
    assert cubic_sparsity(60, **kw) > cubic_sparsity(59, **kw)
    # cubic: the first tenth of the time already removes 0.8 * (1 - 0.9 ** 3) of the weights
    assert cubic_sparsity(10, **kw) == pytest.approx(0.8 * (1 - 0.9**3))


def test_cosine_fraction_decays_to_zero():
    kw = dict(initial=0.3, begin_step=0, end_step=100)
    assert cosine_fraction(0, **kw) == pytest.approx(0.3)
    assert cosine_fraction(50, **kw) == pytest.approx(0.15)
    assert cosine_fraction(100, **kw) == 0.0
    values = [cosine_fraction(t, **kw) for t in range(101)]
    assert all(b <= a for a, b in zip(values, values[1:]))
