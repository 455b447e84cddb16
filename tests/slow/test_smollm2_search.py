"""The search's size prediction on a real model: every grid of the space and kept layers mixed in
smollm2-135m (tied embeddings, real shapes), stored packed, predicted to the byte (issue 16)."""

import json

import pytest

import netslim
from netslim.budget.space import Space, allocation_recipe, decoder_projections, fixed_bytes, option_bytes
from netslim.models.adapter import ModelAdapter

pytestmark = pytest.mark.slow


def test_predicted_bytes_are_the_bytes_on_disk_for_smollm2(smollm2_source, tmp_path):
    lm = netslim.load_model(smollm2_source)
    space = Space()
    projections = decoder_projections(ModelAdapter.from_model(lm.model))
    labels = space.labels()
    choice = {name: labels[i % len(labels)] for i, name in enumerate(projections)}
    predicted = fixed_bytes(lm.model, projections) + sum(option_bytes(projections[n], o, space) for n, o in choice.items())
    [stage] = allocation_recipe(choice, space)
    stage = {k: v for k, v in stage.items() if k not in ("act_order", "damp")} | {"method": "rtn"}  # data-free
    result = netslim.compress(lm, stage, progress=False)
    netslim.save(result, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "netslim.json").read_text())["storage"]["summary"]
    assert summary["tensor_bytes"] == predicted
    assert 2.5e7 < predicted < 2.7e8  # a real mixed model, between all-3-bit and all-16-bit
