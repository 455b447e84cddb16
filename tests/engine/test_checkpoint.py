"""Resumable passes: an interrupted run continues after its last finished block."""

import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import ClassVar, Literal

import pytest
import torch
from safetensors.torch import load_file, save_file

import netslim
from netslim.engine.stats import Stat
from netslim.methods.pruning import PruningConfig, apply_scores
from netslim.methods.registry import register_method, unregister_method

CALLS: list[str] = []
FAIL_AT = {"block": None}
SLEEP = {"seconds": 0.0}


class FlakyConfig(PruningConfig):
    method: Literal["flaky_test"] = "flaky_test"
    needs: ClassVar[frozenset[Stat]] = frozenset({Stat.ACT_NORM})


@pytest.fixture
def flaky():
    def fn(layer, stats, cfg):
        if layer.block_index == FAIL_AT["block"]:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        CALLS.append(layer.name)
        time.sleep(SLEEP["seconds"])
        return apply_scores(layer, layer.weight.abs() * stats.act_norm, cfg)

    register_method("flaky_test", FlakyConfig)(fn)
    CALLS.clear()
    yield
    unregister_method("flaky_test")
    FAIL_AT["block"] = None
    SLEEP["seconds"] = 0.0


def test_interrupted_run_resumes_after_last_finished_block(flaky, token_windows, tmp_path):
    from tiny_models import tiny_model

    reference = tiny_model("llama")
    netslim.compress(reference, {"method": "flaky_test"}, token_windows, progress=False)
    CALLS.clear()

    FAIL_AT["block"] = 1
    model = tiny_model("llama")
    with pytest.raises(KeyboardInterrupt):
        netslim.compress(model, {"method": "flaky_test"}, token_windows, progress=False, checkpoint_dir=tmp_path)
    assert all(".layers.0." in n for n in CALLS) and len(CALLS) == 7

    CALLS.clear()
    FAIL_AT["block"] = None
    fresh = tiny_model("llama")  # a new process would load the untouched input again
    result = netslim.compress(fresh, {"method": "flaky_test"}, token_windows, progress=False, checkpoint_dir=tmp_path)
    assert CALLS and all(".layers.1." in n for n in CALLS)  # block 0 was restored, not redone
    assert len(result.layers) == 14
    for (name, a), (_, b) in zip(reference.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_checkpoint_of_another_job_is_ignored(flaky, token_windows, tmp_path):
    from tiny_models import tiny_model

    netslim.compress(tiny_model("llama"), {"method": "flaky_test", "ratio": 0.3}, token_windows,
                     progress=False, checkpoint_dir=tmp_path)
    CALLS.clear()
    netslim.compress(tiny_model("llama"), {"method": "flaky_test", "ratio": 0.6}, token_windows,
                     progress=False, checkpoint_dir=tmp_path)
    assert len(CALLS) == 14  # different recipe: nothing restored


# --- helpers for the tests below ------------------------------------------------------------

def llama(blocks: int = 2) -> torch.nn.Module:
    """The tiny Llama, or one like it with more blocks."""
    import transformers as T
    from tiny_models import TINY_CONFIGS, tiny_model

    if blocks == 2:
        return tiny_model("llama")
    torch.manual_seed(0)
    config = TINY_CONFIGS["llama"]()
    config.num_hidden_layers = blocks
    return T.AutoModelForCausalLM.from_config(config).eval()


def run(model, windows, folder, recipe=None):
    return netslim.compress(model, recipe or {"method": "flaky_test"}, windows, progress=False, checkpoint_dir=folder)


def interrupted_at_block_1(windows, folder, blocks=2):
    """A run killed in block 1, leaving block 0's checkpoint; returns its step folder."""
    FAIL_AT["block"] = 1
    with pytest.raises(KeyboardInterrupt):
        run(llama(blocks), windows, folder)
    FAIL_AT["block"] = None
    CALLS.clear()
    return next(Path(folder).glob("*/step-0"))


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=0, msg=name)


# --- 1. the fingerprint covers the whole model -----------------------------------------------

CHANGES = {
    "nothing": None,
    "block 1": lambda m: m.model.layers[1].mlp.down_proj.weight,
    "last row of block 0": lambda m: m.model.layers[0].self_attn.q_proj.weight[-1],
    "embeddings": lambda m: m.model.embed_tokens.weight,
    "lm_head": lambda m: m.lm_head.weight,
    "final norm": lambda m: m.model.norm.weight,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_model_changed_anywhere_does_not_resume(flaky, token_windows, tmp_path, change):
    run(llama(), token_windows, tmp_path)  # a finished run leaves both blocks' checkpoints
    CALLS.clear()
    model = llama()
    if CHANGES[change] is not None:
        with torch.no_grad():
            CHANGES[change](model).view(-1)[-1] += 1.0
    run(model, token_windows, tmp_path)
    assert len(CALLS) == (0 if change == "nothing" else 14)


def test_fingerprint_hashes_bf16_and_every_byte(llama_model):
    from netslim.engine.checkpoint import job_fingerprint
    from netslim.models.adapter import ModelAdapter

    adapter = ModelAdapter.from_model(llama_model.to(torch.bfloat16))
    before = job_fingerprint(adapter, [], None)
    with torch.no_grad():
        llama_model.model.layers[1].mlp.up_proj.weight[-1, -1] += 1.0
    assert job_fingerprint(adapter, [], None) != before


# --- 2. each block's checkpoint is committed at once -----------------------------------------

@pytest.mark.parametrize("kill_at", range(1, 17))
def test_a_kill_between_two_writes_resumes_correctly(flaky, token_windows, tmp_path, monkeypatch, kill_at):
    from netslim.engine import checkpoint

    reference = llama(3)
    netslim.compress(reference, {"method": "flaky_test"}, token_windows, progress=False)
    calls = itertools.count(1)

    def killing(fn):
        def wrapper(*args, **kwargs):
            if next(calls) == kill_at:
                raise KeyboardInterrupt
            return fn(*args, **kwargs)
        return wrapper

    with monkeypatch.context() as patch:  # every way a checkpoint writes, counted together
        patch.setattr(checkpoint, "save_file", killing(checkpoint.save_file))
        patch.setattr(os, "replace", killing(os.replace))
        patch.setattr(Path, "write_text", killing(Path.write_text))
        try:
            run(llama(3), token_windows, tmp_path)
        except KeyboardInterrupt:
            pass
    fresh = llama(3)
    run(fresh, token_windows, tmp_path)
    assert_same(reference, fresh)


def test_a_kill_while_writing_a_step_resumes_from_the_step_before(flaky, token_windows, tmp_path, monkeypatch):
    reference = llama(3)
    netslim.compress(reference, {"method": "flaky_test"}, token_windows, progress=False)
    CALLS.clear()
    writes = itertools.count(1)
    write_text = Path.write_text

    def kill_second_json(self, *args, **kwargs):  # block 1's files but its record are written
        if self.suffix == ".json" and next(writes) == 2:
            raise KeyboardInterrupt
        return write_text(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", kill_second_json)
        with pytest.raises(KeyboardInterrupt):
            run(llama(3), token_windows, tmp_path)
    CALLS.clear()
    fresh = llama(3)
    run(fresh, token_windows, tmp_path)
    assert CALLS and not any(".layers.0." in n for n in CALLS)  # block 0 restored, block 1 redone
    assert any(".layers.1." in n for n in CALLS)
    assert_same(reference, fresh)


# --- 3. a damaged or foreign checkpoint is discarded -----------------------------------------

def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_json(step, edit):
    record = json.loads((step / "step.json").read_text())
    edit(record)
    (step / "step.json").write_text(json.dumps(record))


def _wrong_shapes(step):
    state = load_file(step / "block.safetensors")
    name = next(k for k in state if k.endswith("q_proj.weight"))
    state[name] = state[name][:-1].contiguous()
    save_file(state, step / "block.safetensors")


DAMAGES = {
    "garbage json": lambda s: (s / "step.json").write_text("{not json"),
    "json of another job": lambda s: _edit_json(s, lambda r: r.update(fingerprint="0" * 64)),
    "json without specs": lambda s: _edit_json(s, lambda r: r.pop("specs")),
    "bad records": lambda s: _edit_json(s, lambda r: r.update(records=[1, 2])),
    "unknown module kind": lambda s: _edit_json(s, lambda r: r.update(specs={"mlp.up_proj": {"kind": "nope"}})),
    "truncated block": lambda s: _truncate(s / "block.safetensors"),
    "missing block": lambda s: (s / "block.safetensors").unlink(),
    "wrong shapes": _wrong_shapes,
    "truncated hidden": lambda s: _truncate(s / "hidden.safetensors"),
    "missing hidden": lambda s: (s / "hidden.safetensors").unlink(),
    "wrong hidden shape": lambda s: save_file({"hidden": torch.zeros(2, 3)}, s / "hidden.safetensors"),
    "missing step": lambda s: s.rename(s.with_name("step-1")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_discarded_and_the_run_starts_over(flaky, token_windows, tmp_path, capsys, damage):
    reference = llama()
    netslim.compress(reference, {"method": "flaky_test"}, token_windows, progress=False)
    (tmp_path / "keep.txt").write_text("not netslim's")
    step = interrupted_at_block_1(token_windows, tmp_path)
    DAMAGES[damage](step)
    capsys.readouterr()

    fresh = llama()
    run(fresh, token_windows, tmp_path)
    assert len(CALLS) == 14  # started over
    assert_same(reference, fresh)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("netslim:")]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"netslim: discarding the checkpoint in {step.parent}: ")
    assert lines[0].endswith("; starting over")
    assert (tmp_path / "keep.txt").is_file()

    CALLS.clear()  # the checkpoint written after starting over is sound
    run(llama(), token_windows, tmp_path)
    assert not CALLS and "netslim:" not in capsys.readouterr().err


# --- 4. a resumed run counts the seconds of the restored blocks ------------------------------

def test_a_resumed_run_counts_the_seconds_the_interrupted_run_spent(flaky, token_windows, tmp_path):
    SLEEP["seconds"] = 0.05  # block 0's seven layers take at least 0.35 s
    step = interrupted_at_block_1(token_windows, tmp_path)
    SLEEP["seconds"] = 0.0
    recorded = json.loads((step / "step.json").read_text())["seconds"]
    assert recorded >= 7 * 0.05

    result = run(llama(), token_windows, tmp_path)
    assert result.seconds >= recorded


# --- 5. quantized and factorized blocks are rebuilt on resume --------------------------------

@pytest.mark.parametrize("recipe", [{"method": "rtn"}, {"method": "svd"}, [{"method": "rtn"}, {"method": "eora"}]],
                         ids=["rtn", "svd", "rtn+eora"])
def test_compressed_module_kinds_are_restored(token_windows, tmp_path, recipe):
    reference = llama()
    netslim.compress(reference, recipe, token_windows, progress=False)
    run(llama(), token_windows, tmp_path, recipe)
    shutil.rmtree(next(tmp_path.glob("*/step-1")))  # as if killed in block 1

    fresh = llama()
    run(fresh, token_windows, tmp_path, recipe)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in reference.modules()]
    assert_same(reference, fresh)
