"""Vision and encoder models as compression tasks: inputs, quality scores, timing, Taylor loss.

A :class:`ModelTask` bundles what ``netslim compress`` needs for a model that is not a causal
LM: example inputs (to trace the dependency graph and count MACs), a fixed evaluation that
scores any pruned copy, one timed forward pass, and a loss for the ``taylor`` criterion.

    name               scores                                           timed forward
    efficientnet-lite0 top-1 / top-5 agreement with the dense model,    batch 1, 224 x 224
                       KL(dense || pruned), on 64 fixed photo crops
    all-minilm-l6-v2   Lee50 (Pearson), WordSim353, SimLex-999          32 sentences x 128 tokens
                       (Spearman)

Example:
    >>> task = load_task("efficientnet-lite0")
    >>> task.score(task.model)
    {'top1_agreement': 1.0, 'top5_agreement': 1.0, 'kl': 0.0}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from netslim.errors import ConfigError, did_you_mean
from netslim.models.zoo import lite_normalize, load_pretrained, zoo_names

EVAL_IMAGES, CALIB_IMAGES = 64, 32
CALIB_PAIRS, LATENCY_SENTENCES, LATENCY_TOKENS = 64, 32, 128


@dataclass
class ModelTask:
    """A model with its evaluation.

    Attributes:
        name: Zoo name (:func:`netslim.load_pretrained`).
        model: The dense model, eval mode.
        tokenizer: For text models, else ``None``.
        example_inputs: Positional inputs of one forward pass (tracing, MAC counts).
        forward: ``forward(model)``: the timed forward pass.
        score: ``score(model) -> {metric: value}``; the dense model's scores are the baseline.
        loss_fn: ``loss_fn(model) -> scalar`` for the ``taylor`` criterion.
        protocol: How each of the above is defined, for reports.
        params_of: Default denominator of a ``params`` ratio (see ``ChannelPruneConfig``).
        round_to: Default ``round_to`` (hardware-friendly channel counts).
    """

    name: str
    model: nn.Module
    tokenizer: object | None
    example_inputs: tuple
    forward: Callable[[nn.Module], object]
    score: Callable[[nn.Module], dict[str, float]]
    loss_fn: Callable[[nn.Module], torch.Tensor]
    protocol: dict[str, str] = field(default_factory=dict)
    params_of: str = "model"
    round_to: int = 1


def _efficientnet_task() -> ModelTask:
    from netslim.eval.vision import agreement, mean_kl, photo_crops  # noqa: PLC0415

    zoo = load_pretrained("efficientnet-lite0")
    images = lite_normalize(photo_crops(EVAL_IMAGES, seed=0))
    calib = lite_normalize(photo_crops(CALIB_IMAGES, seed=1))
    with torch.no_grad():
        reference = zoo.model(images)
        labels = zoo.model(calib).argmax(-1)  # the dense model's own predictions label the Taylor loss

    def score(model: nn.Module) -> dict[str, float]:
        with torch.inference_mode():
            logits = model.eval()(images)
        scores = {f"{k}_agreement": v for k, v in agreement(reference, logits).items()}
        return {**scores, "kl": mean_kl(reference, logits)}

    return ModelTask(
        name=zoo.name, model=zoo.model, tokenizer=None, example_inputs=(images[:1],),
        forward=lambda m: m(images[:1]), score=score,
        loss_fn=lambda m: F.cross_entropy(m(calib), labels),
        protocol={
            "scores": f"{EVAL_IMAGES} seeded crops (seed 0) of scikit-learn's two sample photos, 224x224, "
                      "(x - 127) / 128; top-1 / top-5 agreement with the dense model's top class; "
                      "kl = mean KL(dense || pruned) of the class distributions (nats)",
            "taylor": f"cross-entropy against the dense model's predictions on {CALIB_IMAGES} other crops (seed 1)",
            "latency": "one 224x224 image (batch 1)",
            "macs": "batch 1, 224x224",
        },
        round_to=8,
    )


def _minilm_task() -> ModelTask:
    from netslim.eval.similarity import contrastive_loss, evaluate_similarity, sentence_pairs  # noqa: PLC0415

    zoo = load_pretrained("all-minilm-l6-v2")
    firsts, seconds = sentence_pairs(CALIB_PAIRS)
    timed = sentence_pairs(300)[0][-LATENCY_SENTENCES:]  # not the calibration sentences
    batch = dict(zoo.tokenizer(timed, padding="max_length", truncation=True, max_length=LATENCY_TOKENS,
                               return_tensors="pt"))
    return ModelTask(
        name=zoo.name, model=zoo.model, tokenizer=zoo.tokenizer,
        example_inputs=(batch["input_ids"], batch["attention_mask"]),
        forward=lambda m: m(**batch), score=lambda m: evaluate_similarity(m.eval(), zoo.tokenizer),
        loss_fn=contrastive_loss(zoo.tokenizer, firsts, seconds),
        protocol={
            "scores": "netslim.eval.similarity: mean pooling, cosine; Lee50 Pearson over 1225 pairs, "
                      "WordSim353 and SimLex-999 Spearman",
            "taylor": f"InfoNCE (scale 20, in-batch negatives) of {CALIB_PAIRS} sentence pairs of "
                      "lee_background.cor (no overlap with Lee50)",
            "latency": f"{LATENCY_SENTENCES} sentences padded to {LATENCY_TOKENS} tokens",
            "macs": f"{LATENCY_SENTENCES} x {LATENCY_TOKENS} tokens",
            "params_of": "prunable: the Linears of the encoder layers (embeddings not counted)",
        },
        params_of="prunable",
    )


_TASKS: dict[str, Callable[[], ModelTask]] = {
    "all-minilm-l6-v2": _minilm_task,
    "efficientnet-lite0": _efficientnet_task,
}
assert set(_TASKS) == set(zoo_names()), "every zoo model needs a task"


def is_task_model(source: str) -> bool:
    """Whether ``source`` names a vision or encoder model of the zoo (case-insensitive)."""
    return str(source).lower() in _TASKS


def load_task(name: str) -> ModelTask:
    """The task of zoo model ``name``.

    Raises:
        ConfigError: for an unknown name.
        ModelNotFoundError / DataNotFoundError: if its pip package or evaluation data is missing.
    """
    key = name.lower()
    if key not in _TASKS:
        raise ConfigError(f"unknown model '{name}'; choose from {sorted(_TASKS)}{did_you_mean(key, _TASKS)}")
    return _TASKS[key]()
