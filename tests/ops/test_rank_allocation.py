"""Rank allocation: budgets are met, dense is never beaten in size, sensitivity follows spectra."""

import pytest
import torch

from netslim.errors import ConfigError
from netslim.ops.lowrank import max_useful_rank
from netslim.ops.rank_allocation import (
    MatrixSpectrum,
    allocated_params,
    sensitivity_ranks,
    uniform_rank,
    uniform_ranks,
)


def test_uniform_rank_keeps_the_requested_share_of_parameters():
    assert uniform_rank(576, 576, 0.8) == int(0.8 * 288)
    assert uniform_rank(1536, 576, 0.5) == int(0.5 * 1536 * 576 / 2112)
    ranks = uniform_ranks({"a": (64, 64), "b": (128, 32)}, 0.25)
    assert ranks == {"a": 24, "b": int(0.75 * 128 * 32 / 160)}


def test_uniform_rank_never_exceeds_the_useful_rank():
    for out, inp in ((64, 64), (10, 3), (1536, 576)):
        assert uniform_rank(out, inp, 0.999) <= max_useful_rank(out, inp)


def _matrices():
    fast = torch.logspace(0, -6, 64)  # energy concentrated in a few directions
    flat = torch.ones(64)
    return {
        "fast": MatrixSpectrum(64, 64, fast),
        "flat": MatrixSpectrum(64, 64, flat),
        "wide": MatrixSpectrum(32, 96, torch.linspace(1, 0.1, 32)),
    }


@pytest.mark.parametrize("remove", [0.1, 0.3, 0.6])
def test_sensitivity_meets_the_budget_tightly(remove):
    matrices = _matrices()
    ranks = sensitivity_ranks(matrices, remove)
    dense = sum(m.dense_params for m in matrices.values())
    total = allocated_params(matrices, ranks)
    assert total <= (1 - remove) * dense
    assert total >= (1 - remove) * dense - (32 + 96)  # within one rank step of the widest matrix
    for name, rank in ranks.items():
        m = matrices[name]
        assert rank is None or 1 <= rank <= max_useful_rank(m.out_features, m.in_features)


def test_sensitivity_takes_rank_from_fast_decaying_spectra_first():
    ranks = sensitivity_ranks(_matrices(), 0.3)
    assert ranks["fast"] is not None
    assert ranks["flat"] is None or ranks["fast"] < ranks["flat"]


def test_bad_ratios_are_config_errors():
    with pytest.raises(ConfigError, match="ratio"):
        sensitivity_ranks(_matrices(), 1.0)
    with pytest.raises(ConfigError, match="ranks below 1"):
        sensitivity_ranks(_matrices(), 0.99)
