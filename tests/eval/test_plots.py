"""report.png: the per-layer figure shows what each layer kept and what it cost."""

from __future__ import annotations

import pytest

from netslim.eval.plots import layer_series, render_plot

RECORDS = [
    {"name": "model.layers.0.self_attn.q_proj", "sparsity": 0.5, "obs_loss": 2.0},
    {"name": "model.layers.0.mlp.down_proj", "sparsity": 0.25, "bits": 4, "obs_loss": 8.0},
    {"name": "model.layers.1.self_attn.q_proj", "params_dense": 100, "params_factorized": 40,
     "dropped_energy_share": 0.01},
]


def test_series_hold_each_layers_values_and_only_what_exists():
    series = layer_series(RECORDS)
    assert series["sparsity"] == [0.5, 0.25, None]
    assert series["bits / 16"] == [None, 0.25, None]
    assert series["rank: params kept"] == [None, None, pytest.approx(0.4)]
    assert series["OBS loss (GPTQ, SparseGPT)"] == [2.0, 8.0, None]
    assert "relative weight error (RTN)" not in series  # no record has it


def test_the_figure_is_a_png_and_nothing_is_written_without_values(tmp_path):
    from PIL import Image

    drawn = render_plot(RECORDS, tmp_path / "report.png", "tiny: wanda")
    assert set(drawn) == set(layer_series(RECORDS))
    with Image.open(tmp_path / "report.png") as image:
        assert image.format == "PNG" and image.size[0] >= 800
    assert render_plot([{"name": "model.layers.0", "removed": True}], tmp_path / "none.png") == {}
    assert not (tmp_path / "none.png").exists()
