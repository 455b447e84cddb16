"""``recover``: fine-tune what the stages before it broke, keeping the structure they left.

A model-scope stage (:attr:`Scope.MODEL`): it trains the whole compressed model, outside the
calibration engine, on its own recovery text. See :mod:`netslim.recovery.adapters` for the
three modes (``lora``, ``norms``, ``masked``) and how each keeps zeros, N:M groups and
removed heads exactly, and :mod:`netslim.recovery.teacher` for distillation from the dense
model through its cached top-k log-probabilities.

Quantized layers are not trained: put ``recover`` before ``gptq``/``rtn`` (recover, then
quantize), as the check before work says.

Example recipe::

    - {method: width, score: flap, ratio: 0.5}
    - {method: recover, mode: lora, tokens: 262144, select: paser}
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, model_validator

from netslim.data.select import check_disjoint, dsir_select, paser_select
from netslim.data.sources import TextSource, resolve_text
from netslim.data.windows import evaluation_windows, tokenize
from netslim.engine.checkpoint import job_fingerprint
from netslim.engine.records import RunLog
from netslim.errors import ConfigError
from netslim.methods.base import FLOAT, Handler, MethodConfig, Scope
from netslim.methods.registry import register_method
from netslim.models.adapter import ModelAdapter
from netslim.recovery.adapters import Trainable, is_norm
from netslim.recovery.loop import train
from netslim.recovery.teacher import TopK, cache_teacher, cpu_has_bf16, window_losses

DEFAULT_LR = {"lora": 1e-3, "norms": 1e-3, "masked": 2e-5}


class RecoverConfig(MethodConfig):
    """Recovery fine-tuning after compression.

    Attributes:
        mode: ``lora`` (masked low-rank updates merged into the weights), ``norms`` (norm
            scales and biases only, PERP) or ``masked`` (every projection weight, its zeros kept).
        loss: ``kd`` (distillation from the dense model), ``ce`` (next-token cross-entropy)
            or ``kd+ce`` (``kd_weight`` of the first).
        kd_weight: The distillation share of ``kd+ce``.
        temperature: Distillation temperature.
        top_k: Teacher log-probabilities cached per position (the rest is one bucket).
        data: The recovery text: a ``.txt`` file or ``wikitext2:valid`` (never the evaluation text).
        seqlen: Tokens per recovery window.
        select: Which windows of ``data`` to train on: ``random``, ``dsir`` (importance
            resampling toward ``target``) or ``paser`` (where compression raised the loss most).
        target: The text ``dsir`` resamples toward.
        windows: Distinct windows selected from ``data`` (at most all its windows).
        tokens: The training budget in tokens (steps = tokens / (batch_size * seqlen)).
        batch_size: Windows per optimizer step (run one at a time, gradients accumulated).
        lr: Peak learning rate (default by mode: lora 1e-3, norms 1e-3, masked 2e-5).
        warmup: Fraction of the steps with a linear warm-up.
        weight_decay: AdamW's decoupled weight decay.
        rank / alpha: LoRA's rank and scale (``alpha / rank``).
        precision: ``bfloat16`` runs every forward (the teacher's too) under CPU autocast;
            weights, optimizer and log-softmax stay float32. ``auto`` (the default) takes
            ``bfloat16`` on a CPU with bfloat16 instructions (AVX-512 BF16 or AMX), where it
            is about twice as fast, and ``float32`` elsewhere.
        seed: Seed of the window selection, LoRA's init and the data order.
        save_every: Optimizer steps between checkpoints (a rerun resumes from the last).
    """

    method: Literal["recover"] = "recover"
    mode: Literal["lora", "norms", "masked"] = "lora"
    loss: Literal["kd", "ce", "kd+ce"] = "kd"
    kd_weight: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    top_k: int = Field(64, ge=1)
    data: str = "wikitext2:valid"
    seqlen: int = Field(512, ge=2)
    select: Literal["random", "dsir", "paser"] = "random"
    target: str | None = None
    windows: int = Field(256, ge=1)
    tokens: int = Field(262_144, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float | None = Field(None, gt=0.0)
    warmup: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0.0)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    seed: int = 0
    save_every: int = Field(25, ge=1)

    scope = Scope.MODEL
    accepts = frozenset({FLOAT})

    @model_validator(mode="after")
    def _target_for_dsir(self) -> RecoverConfig:
        if any(t.split(":", 1)[0] in ("wikitext2", "wikitext2-raw") and t.endswith(":test")
               for t in (self.data, self.target or "")):
            raise ValueError("wikitext2:test is the evaluation text; recover on wikitext2:valid or your own text")
        if self.select == "dsir" and self.target is None:
            raise ValueError("select=dsir resamples toward a target text: set target (a .txt file)")
        if self.select != "dsir" and self.target is not None:
            raise ValueError(f"target is the text select=dsir resamples toward; with select={self.select} drop it")
        return self

    @property
    def steps(self) -> int:
        """Optimizer steps of the token budget (at least one)."""
        return max(1, self.tokens // (self.batch_size * self.seqlen))

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.mode]

    @property
    def autocast(self) -> bool:
        """Whether the forwards run under bfloat16 autocast (``precision``, ``auto`` resolved)."""
        return self.precision == "bfloat16" or self.precision == "auto" and cpu_has_bf16()

    @property
    def needs_teacher(self) -> bool:
        return self.loss != "ce"

    def texts(self) -> list[str]:
        return [self.data] + ([self.target] if self.target else [])

    def preflight(self, shape) -> None:
        for name in shape.touched(self):
            layer = shape.layers[name]
            if layer.kind != FLOAT:
                after = f" (made by stage '{layer.made_by}')" if layer.made_by else ""
                raise ConfigError(f"recover trains float projections, and {name} is a {layer.kind} layer{after}; "
                                  "put recover before quantization (e.g. wanda, recover, gptq)")


@register_method("recover", RecoverConfig)
class RecoverHandler(Handler):
    """Prepares the recovery data on the dense model, then trains at the stage's turn."""

    def prepare(self, cfg: RecoverConfig, adapter: ModelAdapter, tokenizer, held_out: TextSource | None,
                bos_id: int | None, progress: bool) -> None:
        """Before the first stage: tokenize the recovery text, refuse overlap with ``held_out``,
        cache the dense model's top-k log-probabilities (and per-window losses for ``paser``)."""
        if tokenizer is None:
            raise ConfigError("recover needs a tokenizer to read its recovery text; pass tokenizer=")
        text = resolve_text(cfg.data, default_split="valid")
        pool = evaluation_windows(tokenize(tokenizer, text.text), cfg.seqlen, None, bos_id, text.name)
        if held_out is not None:
            check_disjoint(tokenizer.batch_decode(pool.ids, skip_special_tokens=True), held_out, "recovery")
        if cfg.windows > len(pool):
            raise ConfigError(f"recover: windows={cfg.windows}, but {text.name} holds only {len(pool)} windows of "
                              f"{cfg.seqlen} tokens; lower windows or give a longer text")
        self.pool = pool
        # random and dsir choose from the text alone, now; paser needs the compressed model, at its turn
        self.rows = torch.arange(len(pool))
        if cfg.select == "random":
            generator = torch.Generator().manual_seed(cfg.seed)
            self.rows = torch.randperm(len(pool), generator=generator)[:cfg.windows].sort().values
        elif cfg.select == "dsir":
            target = tokenize(tokenizer, resolve_text(cfg.target, default_split="valid").text)
            self.rows = dsir_select(pool.ids, target, cfg.windows, cfg.seed)
        model = adapter.model
        ids = pool.ids[self.rows]
        self.teacher: TopK | None = None  # for the windows of self.rows, in that order
        autocast = cfg.autocast
        self.dense_losses = None  # for paser: each pool window's loss, from the teacher's forwards when there are any
        if cfg.needs_teacher:
            self.teacher, self.dense_losses = cache_teacher(model, ids, cfg.top_k, cfg.temperature, progress, autocast)
        elif cfg.select == "paser":
            self.dense_losses = window_losses(model, ids, progress, "dense loss", autocast)

    def act_model(self, cfg: RecoverConfig, adapter: ModelAdapter, log: RunLog, checkpoint_dir: Path | None,
                  progress: bool) -> dict:
        """Select the windows, train, merge; record every trained projection. Returns the summary."""
        model = adapter.model
        was_training = model.training
        model.eval()  # no dropout: the run is deterministic and resumable
        picked = torch.arange(len(self.rows))  # positions in self.rows
        if cfg.select == "paser":
            rise = window_losses(model, self.pool.ids, progress, "compressed loss",
                                 cfg.autocast) - self.dense_losses
            picked = paser_select(self.pool.ids, rise, cfg.windows, seed=cfg.seed)
        chosen = self.rows[picked]
        ids = self.pool.ids[chosen]
        teacher = self.teacher[picked] if self.teacher is not None else None
        projections = {name: module for i in range(adapter.num_blocks)
                       for name, module in adapter.block_linears(i).items() if not cfg.ignores(name)}
        norms = {f"{adapter.block_name(i)}.{n}": m for i in range(adapter.num_blocks)
                 for n, m in adapter.blocks[i].named_modules() if n and is_norm(m)}
        norms[adapter.spec.final_norm] = adapter.final_norm
        flags = {name: p.requires_grad for name, p in model.named_parameters()}
        for p in model.parameters():
            p.requires_grad_(False)
        trainable = Trainable(cfg.mode, projections, norms, cfg.rank, cfg.alpha, cfg.seed)
        checkpoint = None  # keyed by the stage, its windows and the weights it starts from
        if checkpoint_dir is not None:
            key = job_fingerprint(adapter, [cfg.model_dump(mode="json")], ids)[:16]
            checkpoint = Path(checkpoint_dir) / f"recover-{key}.pt"
        try:
            with torch.enable_grad():
                history = train(model, trainable, ids, teacher, loss=cfg.loss, kd_weight=cfg.kd_weight,
                                steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.peak_lr,
                                warmup=round(cfg.warmup * cfg.steps), weight_decay=cfg.weight_decay, seed=cfg.seed,
                                autocast=cfg.autocast, checkpoint=checkpoint,
                                save_every=cfg.save_every, progress=progress)
        finally:
            trainable.merge()
            model.train(was_training)
            for name, p in model.named_parameters():
                p.requires_grad_(flags.get(name, True))
        for name, module in projections.items():
            log.add(name, module, cfg.method, None)
        losses = history["losses"]
        return {"method": cfg.method, "mode": cfg.mode, "loss": cfg.loss, "select": cfg.select,
                "precision": "bfloat16" if cfg.autocast else "float32",
                "windows": [int(i) for i in chosen], "data": self.pool.source, "steps": history["steps"],
                "tokens": history["steps"] * cfg.batch_size * cfg.seqlen, "trained_params": trainable.count(),
                "seconds": history["seconds"], "resumed_at_step": history["resumed_at"],
                "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                "losses": losses}
