"""Latency helper: medians of the requested runs, threads restored."""

import pytest
import torch

from tiny_models import tiny_model
from netslim.eval.latency import Latency, compare_latency, measure_latency, paired_speedup


def test_compare_latency_interleaves_and_reports_medians():
    before = torch.get_num_threads()
    models = {"a": tiny_model("llama"), "b": tiny_model("qwen2")}
    ids = torch.randint(3, 128, (1, 24))
    lat = compare_latency(models, ids, new_tokens=3, generate_prompt=8, repeats=3, warmup=1, threads=1)
    assert torch.get_num_threads() == before
    for result in lat.values():
        assert len(result.prefill_runs) == 3 and len(result.generate_runs) == 3
        assert sorted(result.prefill_runs)[1] == result.prefill_s and result.generate_s > 0
        assert result.as_dict()["threads"] == 1 and result.prompt_tokens == 24 and result.generate_prompt_tokens == 8


def test_measure_latency_without_generation():
    lat = measure_latency(tiny_model("opt"), torch.randint(3, 128, (1, 8)), new_tokens=0, repeats=2)
    assert lat.generate_s is None and lat.prefill_s > 0 and lat.as_dict()["new_tokens"] == 0



def test_paired_speedup_is_robust_to_a_speed_change_that_the_ratio_of_medians_is_not():
    # the candidate is twice as fast in four rounds; in the third the machine sped up between the
    # dense run and the candidate's, and the medians land on different rounds
    timed = {"dense": Latency(3.0, None, [3.0, 3.0, 3.0, 1.0, 1.0], []),
             "candidate": Latency(0.5, None, [1.5, 1.5, 0.5, 0.5, 0.5], [])}
    assert timed["dense"].prefill_s / timed["candidate"].prefill_s == pytest.approx(6.0)
    assert paired_speedup(timed, "dense", "candidate") == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_speedup({**timed, "short": Latency(1.0, None, [1.0], [])}, "dense", "short")
