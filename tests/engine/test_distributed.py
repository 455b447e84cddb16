"""Calibration split over two processes (torch.distributed, gloo on CPU) gives the statistics
and the compressed weights of one process with all the windows."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import netslim
from netslim.engine.distributed import shard
from netslim.engine.stats import Stat
from netslim.engine.sweep import check_distributable, iter_block_stats
from netslim.errors import ConfigError
from netslim.engine.execution import Execution
from netslim.job import Protocol, compress_job
from netslim.models.adapter import ModelAdapter
from safetensors.torch import load_file
from tiny_models import eval_text_beside, random_windows, tiny_model

TESTS = Path(__file__).resolve().parents[1]
RECIPES = {"gptq": {"method": "gptq", "bits": 4, "group_size": 32}, "wanda": {"method": "wanda", "ratio": 0.5},
           "moe-wanda": {"method": "wanda", "ratio": 0.5}}  # "moe-" runs on the tiny Mixtral: experts' norms summed too

# One rank: its hessians of every block (a statistics sweep) and the compressed weights of
# each recipe, saved by rank 0 only (as a job writes from one rank).
RANK = """
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[4])

from netslim.engine.stats import Stat
from netslim.engine.sweep import check_distributable, iter_block_stats
from netslim.models.adapter import ModelAdapter
import netslim
from tiny_models import random_windows, tiny_model
rank, world, folder, RECIPES = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[5])
windows = lambda: random_windows(6)
dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
out = {}
adapter = ModelAdapter.from_model(tiny_model("llama"))
for index, stats in iter_block_stats(adapter, windows(), frozenset({Stat.HESSIAN})):
    out.update({f"hessian {name}": s.hessian for name, s in stats.layers.items()})
for method, recipe in RECIPES.items():
    model = tiny_model("mixtral" if method.startswith("moe-") else "llama")
    netslim.compress(model, recipe, windows(), progress=False)
    out.update({f"{method} {k}": v for k, v in model.state_dict().items()})
if rank == 0:
    torch.save(out, f"{folder}/result.pt")
dist.destroy_process_group()
"""


def windows():
    return random_windows(6)


def _run(world: int, folder: Path) -> dict:
    folder.mkdir()
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(world), str(folder), str(TESTS),
                               json.dumps(RECIPES)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(world)]
    for process in ranks:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]
    return torch.load(folder / "result.pt", weights_only=True)


def test_two_gloo_processes_give_the_statistics_and_weights_of_one(tmp_path):
    one, two = _run(1, tmp_path / "one"), _run(2, tmp_path / "two")
    assert one.keys() == two.keys()
    hessians = [k for k in one if k.startswith("hessian")]
    assert len(hessians) == 2 * 7  # every projection of both blocks
    for name in hessians:  # the same sums, in another order
        torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(".mlp.experts.3." in k for k in one if k.startswith("moe-wanda"))
    for name in (k for k in one if k.startswith(("wanda", "moe-wanda"))):
        assert torch.equal(two[name], one[name]), name
    dequantized = {k for k in one if k.startswith("gptq") and k.endswith(".codes")}
    assert dequantized
    for name in dequantized:  # a code may flip where float order breaks a near tie, no more
        assert (two[name] != one[name]).float().mean() < 0.01, name


def test_a_single_process_is_unchanged():
    ids = windows().ids
    assert shard(ids) is ids  # no process group: every window, nothing summed
    adapter = ModelAdapter.from_model(tiny_model("llama"))
    stats = dict(iter_block_stats(adapter, windows(), frozenset({Stat.ACT_NORM})))
    assert stats[0].layers["model.layers.0.self_attn.q_proj"].n_tokens == 6 * 32


def test_what_cannot_be_split_is_refused(monkeypatch):
    monkeypatch.setattr("netslim.engine.distributed.world_size", lambda: 2)
    monkeypatch.setattr("netslim.engine.sweep.world_size", lambda: 2)
    with pytest.raises(ConfigError, match="skip_loss cannot be split over processes"):
        check_distributable(frozenset({Stat.SKIP_LOSS, Stat.HESSIAN}))
    with pytest.raises(ConfigError, match="1 calibration windows cannot be split over 2 processes"):
        shard(torch.zeros(1, 8, dtype=torch.long))
    monkeypatch.setattr("netslim.engine.sequential.world_size", lambda: 2)
    with pytest.raises(ConfigError, match="checkpoint_dir under several processes"):
        netslim.compress(tiny_model("llama"), {"method": "rtn", "bits": 4}, checkpoint_dir="unused", progress=False)
    monkeypatch.setattr("netslim.job.world_size", lambda: 2)
    for source, recipe, execution, message in (
        ("smollm2-135m", [{"method": "wanda"}, {"method": "recover"}], Execution(), "recover fine-tunes in one process"),
        ("smollm2-135m", [{"method": "wanda"}], Execution(offload=True), "--offload streams one block at a time"),
        ("efficientnet-lite0", [{"method": "channels", "ratio": 0.3}], Execution(), "channel pruning"),
    ):
        with pytest.raises(ConfigError, match=message):
            compress_job(source, recipe, None, Protocol(), progress=False, execution=execution)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli_job(folder: Path, text: Path, out: Path, world: int) -> None:
    """``netslim compress`` as ``torchrun --nproc-per-node world`` starts it (the environment it sets)."""
    args = ["compress", folder, "--out", out, "--method", "wanda", "--calib", text, "--calib-windows", 6,
            "--seqlen", 32, "--eval", eval_text_beside(text), "--eval-windows", 5]
    port = _free_port()
    ranks = []
    for rank in range(world):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if world > 1:
            env.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                       MASTER_PORT=str(port))
        ranks.append(subprocess.Popen([sys.executable, "-m", "netslim", *map(str, args)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    for process in ranks:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-2000:]


def test_the_cli_job_under_torchrun_splits_the_windows_and_writes_one_folder(tiny_folder, tmp_path):
    folder, text = tiny_folder
    runs = tmp_path / "runs"
    runs.mkdir()
    _cli_job(folder, text, runs / "one", 1)
    _cli_job(folder, text, runs / "two", 2)
    assert sorted(p.name for p in runs.iterdir()) == ["one", "two"]  # rank 1 wrote nothing, left nothing
    one, two = (json.loads((runs / name / "report.json").read_text()) for name in ("one", "two"))
    for side in ("baseline", "compressed"):  # 5 evaluation windows, split 3 + 2: the same sums in another order
        assert two[side]["ppl"] == pytest.approx(one[side]["ppl"], rel=1e-6), side
    assert two["protocol"]["windows"] == one["protocol"]["windows"] == 5
    assert two["protocol"]["predicted_tokens"] == one["protocol"]["predicted_tokens"]
    assert [r["calibration_tokens"] for r in two["layers"]] == [r["calibration_tokens"] for r in one["layers"]]
    weights = [load_file(runs / name / "model.safetensors") for name in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:  # Wanda's norms summed over the ranks: the same masks
        assert torch.equal(weights[0][name], weights[1][name]), name

