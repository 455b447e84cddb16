"""Every registered method runs on a tiny Llama, and its result saves and reloads exactly.

``STAGES`` holds a small reasonable recipe per method; a method registered without an entry
here fails ``test_every_registered_method_has_a_stage``.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

import netslim
from netslim.export.save import round_for_storage

QUANT = {"bits": 4, "group_size": 16}  # the tiny widths (64, 128) are multiples of 16
STAGES: dict[str, dict | list[dict]] = {
    "asvd": {"method": "asvd", "ratio": 0.3},
    "depth": {"method": "depth", "ratio": 0.5},
    "eora": [{"method": "gptq", **QUANT}, {"method": "eora", "rank": 4}],  # compensates a layer stage
    "gptq": {"method": "gptq", **QUANT},
    "magnitude": {"method": "magnitude", "ratio": 0.5},
    "rtn": {"method": "rtn", **QUANT},
    "slicegpt": {"method": "slicegpt", "ratio": 0.25},
    "sparsegpt": {"method": "sparsegpt", "ratio": 0.5},
    "svd": {"method": "svd", "ratio": 0.3},
    "svd_llm": {"method": "svd_llm", "ratio": 0.3},
    "wanda": {"method": "wanda", "ratio": 0.5},
    "width": {"method": "width", "ratio": 0.25},
}
# Methods not run on a causal LM here, and why.
EXCLUDED = {"channels": "graph-based channel pruning of vision/encoder models (tests/test_channel_job.py, tests/graph)",
            "recover": "fine-tuning on a recovery text, which needs a tokenizer (tests/methods/test_recover.py)"}
IDS = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(7))


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def test_every_registered_method_has_a_stage():
    registered = set(netslim.method_names())
    assert set(EXCLUDED) == {"channels", "recover"}, "only these two have no stage of their own here"
    assert set(EXCLUDED) <= registered
    assert set(STAGES) == registered - set(EXCLUDED)


@pytest.mark.parametrize("method", sorted(STAGES))
def test_method_runs_on_tiny_llama_and_round_trips(method, token_windows, tmp_path):
    stages = STAGES[method] if isinstance(STAGES[method], list) else [STAGES[method]]
    assert stages[-1]["method"] == method
    model = tiny_model("llama")
    dense = _logits(model)
    result = netslim.compress(model, stages, token_windows, progress=False)
    assert result.model is model
    assert [stage.method for stage in result.recipe] == [s["method"] for s in stages]
    after = _logits(model)
    assert torch.isfinite(after).all()
    assert not torch.equal(after, dense), f"{method} left the model unchanged"
    round_for_storage(model)  # the default value dtype of save, applied in memory as a job does
    expected = _logits(model)
    netslim.save(result, tmp_path / "out")
    loaded = netslim.load(tmp_path / "out").model
    assert torch.equal(_logits(loaded), expected)
    assert sum(p.numel() for p in loaded.state_dict().values()) == sum(p.numel() for p in model.state_dict().values())
