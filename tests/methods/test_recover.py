"""The recover stage: structure kept exactly, cached-teacher distillation, data selection, resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from tiny_models import tiny_llama_with_bpe

import netslim
from netslim.data import resolve_text
from netslim.data.select import check_disjoint, dsir_select, overlap_fractions, paser_select
from netslim.data.sources import TextSource
from netslim.errors import ConfigError
from netslim.recovery import loop
from netslim.recovery.teacher import TopK, cache_teacher, cpu_has_bf16, topk_kd_loss, window_losses
from netslim.training.distill import kd_divergence

SEQLEN = 64


@pytest.fixture(scope="module")
def llama():
    return tiny_llama_with_bpe()


@pytest.fixture(scope="module")
def recovery_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "recovery.txt"
    path.write_text(resolve_text("wikitext2:valid").text[:40_000], encoding="utf-8")
    return str(path)


def _stage(text, **settings):
    return {"method": "recover", "data": text, "seqlen": SEQLEN, "windows": 12, "batch_size": 2,
            "tokens": 2 * SEQLEN * 6, "lr": 1e-2, **settings}


def _calib(tokenizer):
    return torch.randint(0, len(tokenizer), (4, SEQLEN), generator=torch.Generator().manual_seed(0))


def _weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("mode, select", [("lora", "random"), ("norms", "paser"), ("masked", "dsir")])
def test_recovery_keeps_every_zero_and_the_2_4_groups(llama, recovery_text, mode, select):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    netslim.compress(model, {"method": "wanda", "ratio": 0.5, "pattern": "2:4"}, _calib(tokenizer), progress=False)
    pruned = _weights(model)
    target = {"target": recovery_text} if select == "dsir" else {}
    stage = _stage(recovery_text, mode=mode, loss="ce", select=select, **target)
    result = netslim.compress(model, stage, tokenizer=tokenizer, progress=False)
    after = _weights(model)
    assert set(after) == set(pruned)  # no adapter left behind: LoRA is merged
    changed = [n for n in after if not torch.equal(after[n], pruned[n])]
    assert changed, f"{mode} trained nothing"
    for name, weight in after.items():
        if name.endswith("proj.weight"):
            assert torch.equal(weight == 0, pruned[name] == 0), f"{name}: the zeros moved"
            groups = (weight.view(weight.shape[0], -1, 4) != 0).sum(-1)
            assert int(groups.max()) <= 2, f"{name} is no longer 2:4"
    if mode == "norms":
        assert all("norm" in n or n.endswith("bias") for n in changed), changed
    summary = result.recovery[0]
    assert summary["steps"] == 6 and len(summary["losses"]) == 6 and len(set(summary["windows"])) == 12
    assert summary["last_loss"] < summary["first_loss"]
    assert all("recover" in r["methods"] for r in result.layers)
    assert all(p.requires_grad for p in model.parameters())  # the flags the model came with


def test_recovery_after_width_keeps_the_removed_heads_removed(llama, recovery_text):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    recipe = [{"method": "width", "ratio": 0.3}, _stage(recovery_text, loss="ce")]
    netslim.compress(model, recipe[:1], _calib(tokenizer), progress=False)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    config = copy.deepcopy(model.config.to_dict())
    netslim.compress(model, recipe[1:], tokenizer=tokenizer, progress=False)
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert model.config.to_dict() == config


def test_recover_after_quantization_is_refused_before_any_work(llama, recovery_text):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    with pytest.raises(ConfigError, match="put recover before quantization"):
        netslim.compress(model, [{"method": "rtn", "bits": 4, "group_size": 16}, _stage(recovery_text)],
                         _calib(tokenizer), tokenizer=tokenizer, progress=False)


def test_topk_loss_with_the_whole_vocabulary_is_the_full_kl():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 9, 50), torch.randn(2, 9, 50) * 3
    full = kd_divergence(student[:, :-1], teacher[:, :-1], 2.0)  # T**2 KL, mean over positions
    whole = topk_kd_loss(student, TopK.from_logits(teacher, 50, 2.0))
    assert math.isclose(float(whole), float(full), rel_tol=1e-5)
    truncated = topk_kd_loss(student, TopK.from_logits(teacher, 5, 2.0))
    assert float(truncated) < float(whole)  # lumping the tail loses information, never adds it


def test_cached_teacher_loss_equals_the_live_teacher_loss(llama):
    teacher, tokenizer = llama
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.model.layers[0].mlp.up_proj.weight.mul_(0.5)
    ids = torch.randint(0, len(tokenizer), (3, SEQLEN), generator=torch.Generator().manual_seed(1))
    cache, losses = cache_teacher(teacher, ids, 16, 1.5, progress=False)
    assert torch.allclose(losses, window_losses(teacher, ids, progress=False))  # the same forwards give the loss
    for i in range(3):
        logits = student(input_ids=ids[i:i + 1]).logits
        with torch.no_grad():
            live = TopK.from_logits(teacher(input_ids=ids[i:i + 1]).logits, 16, 1.5)
        assert torch.equal(topk_kd_loss(logits, cache[i:i + 1]), topk_kd_loss(logits, live))
        assert float(topk_kd_loss(logits, live).detach()) > 0


def test_kd_recovery_moves_the_student_toward_the_teacher(llama, recovery_text):
    dense, tokenizer = llama
    model = copy.deepcopy(dense)
    netslim.compress(model, {"method": "magnitude", "ratio": 0.6}, progress=False)
    result = netslim.recover(model, dense, _stage(recovery_text, top_k=32), tokenizer=tokenizer, progress=False)
    assert result["loss"] == "kd" and result["last_loss"] < result["first_loss"]


def test_interrupted_recovery_resumes_to_the_same_weights(llama, recovery_text, tmp_path, monkeypatch):
    dense, tokenizer = llama
    stage = _stage(recovery_text, loss="ce", save_every=2)
    whole = copy.deepcopy(dense)
    netslim.recover(whole, None, stage, tokenizer=tokenizer, progress=False)

    interrupted = copy.deepcopy(dense)
    real = loop.lr_at

    def stop_at_3(step, *args):
        if step == 3:
            raise KeyboardInterrupt
        return real(step, *args)

    monkeypatch.setattr(loop, "lr_at", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        netslim.recover(interrupted, None, stage, tokenizer=tokenizer, progress=False, checkpoint_dir=tmp_path)
    monkeypatch.setattr(loop, "lr_at", real)
    resumed = copy.deepcopy(dense)
    summary = netslim.recover(resumed, None, stage, tokenizer=tokenizer, progress=False, checkpoint_dir=tmp_path)
    assert summary["resumed_at_step"] == 2
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_overlap_with_the_evaluation_text_is_refused(llama, tmp_path):
    model, tokenizer = copy.deepcopy(llama[0]), llama[1]
    leaked = tmp_path / "leaked.txt"
    leaked.write_text(resolve_text("wikitext2:test").text[5000:25_000], encoding="utf-8")
    with pytest.raises(ConfigError, match="overlaps the evaluation text"):
        netslim.recover(model, None, _stage(str(leaked), loss="ce", seqlen=128), tokenizer=tokenizer, progress=False)
    with pytest.raises(ConfigError, match="overlaps the evaluation text"):  # calibration too
        netslim.compress(model, {"method": "wanda", "ratio": 0.5},
                         netslim.calibration(model, tokenizer, source=str(leaked), windows=8, seqlen=128),
                         tokenizer=tokenizer, progress=False, held_out="wikitext2:test")
    with pytest.raises(ConfigError, match="evaluation text"):
        netslim.RecoverConfig(data="wikitext2:test")


def test_valid_and_test_splits_do_not_count_as_overlap():
    valid, test = resolve_text("wikitext2:valid").text, resolve_text("wikitext2:test")
    pieces = [valid[i:i + 3000] for i in range(0, 300_000, 3000)]
    assert float(overlap_fractions(pieces, test.text).max()) < 0.5
    check_disjoint(pieces, test, "recovery")
    with pytest.raises(ConfigError):
        check_disjoint([test.text[10_000:13_000]], TextSource("test", test.text), "recovery")


def test_dsir_draws_toward_the_target_distribution():
    generator = torch.Generator().manual_seed(0)
    low = torch.randint(0, 50, (40, 32), generator=generator)  # one "domain": ids 0..49
    high = torch.randint(50, 100, (40, 32), generator=generator)  # another: ids 50..99
    pool = torch.cat([low, high])
    chosen = dsir_select(pool, torch.randint(50, 100, (2000,), generator=generator), 20, seed=0)
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    assert (chosen >= 40).all()  # every window from the target's domain


def test_paser_takes_the_windows_that_rose_most_and_spreads_the_budget():
    generator = torch.Generator().manual_seed(0)
    pool = torch.cat([torch.randint(0, 50, (30, 32), generator=generator),
                      torch.randint(50, 100, (30, 32), generator=generator)])
    rise = torch.cat([torch.rand(30, generator=generator) + 1.0, torch.rand(30, generator=generator)])
    chosen = paser_select(pool, rise, 12, clusters=2, seed=0)
    assert len(chosen) == 12
    first = chosen[chosen < 30]
    assert len(first) > 6  # the cluster compression broke more gets the larger share
    assert set(first.tolist()) == set(rise[:30].argsort(descending=True)[:len(first)].tolist())  # its worst first
    assert len(chosen[chosen >= 30]) >= 1  # and the other cluster is not starved
    with pytest.raises(ConfigError, match="cannot select"):
        paser_select(pool, rise, 61)


def test_recovery_settings_are_checked():
    with pytest.raises(ConfigError, match="target"):
        netslim.RecoverConfig(select="dsir")
    with pytest.raises(ConfigError, match="mode"):
        netslim.RecoverConfig(mode="full")
    assert netslim.RecoverConfig(tokens=4096, batch_size=2, seqlen=512).steps == 4
    assert loop.window_order(5, 2, 2, 0) + loop.window_order(5, 3, 2, 0)[:0] == loop.window_order(5, 2, 2, 0)
    seen = loop.window_order(5, 0, 5, 3)
    assert sorted(seen) == list(range(5))  # one pass visits every window once


def test_cli_recover_writes_the_recovery_into_the_report_and_the_model_reloads(tiny_folder, tmp_path):
    import json
    import subprocess
    import sys

    from tiny_models import eval_text_beside
    from typer.testing import CliRunner

    from netslim.cli import app

    folder, text = tiny_folder
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("- {method: wanda, ratio: 0.5, pattern: '2:4'}\n"
                      f"- {{method: recover, mode: lora, loss: kd, data: '{text}', seqlen: 32, windows: 8, "
                      "batch_size: 2, tokens: 256}\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["compress", str(folder), "--out", str(out), "--recipe", str(recipe), "--seqlen", "32",
                                      "--calib", str(text), "--calib-windows", "4", "--eval", str(eval_text_beside(text)),
                                      "--eval-windows", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    (summary,) = report["recovery"]
    assert summary["mode"] == "lora" and summary["steps"] == 4 and summary["tokens"] == 256
    assert summary["precision"] == ("bfloat16" if cpu_has_bf16() else "float32")
    assert "Recovery (lora" in (out / "report.md").read_text()
    assert [s["method"] for s in report["recipe"]] == ["wanda", "recover"]
    check = ("import sys, netslim; m = netslim.load(sys.argv[1]).model; w = m.model.layers[0].mlp.up_proj.weight; "
             "print(int((w.view(w.shape[0], -1, 4) != 0).sum(-1).max()), float((w == 0).float().mean()))")
    groups, sparsity = subprocess.run([sys.executable, "-c", check, str(out)], capture_output=True, text=True,
                                      check=True).stdout.split()
    assert int(groups) == 2 and float(sparsity) == 0.5


def test_calibration_windows_resampled_toward_a_target_text(llama, tmp_path):
    model, tokenizer = llama
    pool = tmp_path / "pool.txt"
    pool.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(300)) + " " +
                    " ".join(f"stock prices fell {i} percent as markets closed lower." for i in range(300)))
    target = tmp_path / "target.txt"
    target.write_text(" ".join(f"markets closed lower as stock prices fell {i} percent." for i in range(50)))
    windows = netslim.calibration(model, tokenizer, source=str(pool), windows=8, seqlen=SEQLEN, target=str(target))
    assert windows.ids.shape == (8, SEQLEN) and "DSIR" in windows.source
    texts = tokenizer.batch_decode(windows.ids)
    assert sum("stock" in t for t in texts) == 8 and sum("fox" in t for t in texts) <= 1
    plain = netslim.calibration(model, tokenizer, source=str(pool), windows=8, seqlen=SEQLEN)
    assert sum("fox" in t for t in tokenizer.batch_decode(plain.ids)) >= 2  # random draws see both halves


def test_paser_calibration_keeps_the_windows_a_draft_hurt_most_and_leaves_the_model_alone(llama, tmp_path,
                                                                                           monkeypatch):
    import netslim.api

    model, tokenizer = llama
    pool = tmp_path / "pool.txt"
    pool.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(300)) + " " +
                    " ".join(f"stock prices fell {i} percent as markets closed lower." for i in range(300)))
    fox = tokenizer(" fox", add_special_tokens=False).input_ids[-1]  # its last piece: no stock word has it
    scored = []

    def losses(net, ids, *args):  # the draft (it has zeros) loses 10 nats on fox text; the dense model nothing
        scored.append(net is model)
        drafted = any(bool((p == 0).any()) for p in net.parameters())
        return torch.tensor([10.0 * drafted * bool((w == fox).any()) for w in ids])

    monkeypatch.setattr(netslim.api, "window_losses", losses)
    before = _weights(model)
    recipe = [{"method": "wanda", "ratio": 0.5}, _stage(str(pool), loss="ce")]  # the draft skips recover
    chosen = netslim.calibration(model, tokenizer, source=str(pool), windows=8, seqlen=SEQLEN, select="paser",
                                 recipe=recipe)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the draft ran on a copy
    assert sorted(scored) == [False, True]  # one pass with the draft, one with the model
    assert chosen.ids.shape == (8, SEQLEN) and "PASER after a wanda draft" in chosen.source
    assert sum(bool((w == fox).any()) for w in chosen.ids) >= 7  # the floor may leave one to the other text
    plain = netslim.calibration(model, tokenizer, source=str(pool), windows=8, seqlen=SEQLEN)
    assert sum(bool((w == fox).any()) for w in plain.ids) <= 6


@pytest.mark.parametrize("settings, message", [
    ({"select": "paser"}, "give recipe="),
    ({"select": "dsir"}, "toward a target text"),
    ({"select": "paser", "target": "x.txt", "recipe": {"method": "wanda"}}, "drop it"),
    ({"select": "best"}, "use random, dsir or paser"),
])
def test_calibration_selection_refuses_what_cannot_run(llama, settings, message):
    with pytest.raises(ConfigError, match=message):
        netslim.calibration(llama[0], llama[1], windows=4, seqlen=SEQLEN, **settings)


def test_the_raw_release_of_the_evaluation_text_counts_as_overlap():
    test = resolve_text("wikitext2:test")
    passage = test.text[20_000:26_000]
    raw = passage.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" , ", ", ").replace(" . ", ". ")
    assert raw != passage
    with pytest.raises(ConfigError, match="overlaps"):
        check_disjoint([raw], test, "recovery")


def test_enwiki_sample_is_real_text_apart_from_wikitext2():
    pytest.importorskip("gensim")
    wiki = resolve_text("enwiki-sample")
    assert "106 articles" in wiki.name and len(wiki.text.split()) > 400_000
    assert "'''" not in wiki.text and "[[" not in wiki.text and "#REDIRECT" not in wiki.text
    pieces = [wiki.text[i:i + 3000] for i in range(0, 600_000, 3000)]
    assert float(overlap_fractions(pieces, resolve_text("wikitext2:test").text).max()) < 0.05


@pytest.mark.parametrize("sparse", [False, True])
def test_merged_lora_computes_what_was_trained(sparse):
    from netslim.recovery.adapters import Trainable

    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 8)
    if sparse:
        with torch.no_grad():
            layer.weight[:, ::2] = 0
    trainable = Trainable("lora", {"p": layer}, {}, rank=3, alpha=6.0)
    with torch.no_grad():
        for name, p in trainable.params.items():
            p.normal_()  # as if trained: B is no longer zero
    x = torch.randn(5, 12)
    trained = layer(x).detach()
    trainable.merge()
    assert not torch.nn.utils.parametrize.is_parametrized(layer) and not layer._forward_hooks
    assert torch.allclose(layer(x), trained, atol=1e-5)
    if sparse:
        assert (layer.weight[:, ::2] == 0).all()


@pytest.mark.parametrize("precision, has_bf16, autocast", [("auto", True, True), ("auto", False, False),
                                                           ("float32", True, False), ("bfloat16", False, True)])
def test_precision_auto_takes_bfloat16_only_where_the_cpu_has_it(monkeypatch, precision, has_bf16, autocast):
    import netslim.methods.recover as recover

    monkeypatch.setattr(recover, "cpu_has_bf16", lambda: has_bf16)
    assert recover.RecoverConfig(precision=precision).autocast is autocast
