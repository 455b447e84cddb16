"""Wall-clock latency of causal LMs: prefill of a prompt and greedy generation of new tokens.

Timings are medians of repeated runs after warm-up runs, with a fixed number of CPU threads.
:func:`compare_latency` times several models in one process and interleaves their runs, so
that a machine shared with other jobs slows every model alike and the ratios stay fair.

Example:
    >>> ids = torch.randint(0, 1000, (1, 512))
    >>> lat = compare_latency({"dense": dense, "pruned": pruned}, ids, new_tokens=64, threads=2)
    >>> lat["dense"].prefill_s / lat["pruned"].prefill_s
"""

from __future__ import annotations

import contextlib
import inspect
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Latency:
    """Timings of one model (seconds).

    Attributes:
        prefill_s: Median time of one prefill of the prompt (KV cache plus last-token logits).
        generate_s: Median time of greedy generation of ``new_tokens`` after the prompt
            (``None`` when not measured).
        prefill_runs / generate_runs: Every timed run.
        threads: ``torch.get_num_threads()`` during the runs.
        prompt_tokens / generate_prompt_tokens / new_tokens: Shapes of the measured work.
    """

    prefill_s: float
    generate_s: float | None
    prefill_runs: list[float] = field(repr=False)
    generate_runs: list[float] = field(repr=False)
    threads: int = 1
    prompt_tokens: int = 0
    generate_prompt_tokens: int = 0
    new_tokens: int = 0

    def as_dict(self) -> dict:
        """Plain dict for reports (medians and protocol, not the single runs)."""
        return {
            "prefill_s": self.prefill_s,
            "generate_s": self.generate_s,
            "threads": self.threads,
            "prompt_tokens": self.prompt_tokens,
            "generate_prompt_tokens": self.generate_prompt_tokens,
            "new_tokens": self.new_tokens,
            "runs": len(self.prefill_runs),
        }


@contextlib.contextmanager
def num_threads(threads: int | None) -> Iterator[int]:
    """Temporarily set ``torch.set_num_threads``; yields the count in effect."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.inference_mode()
def prefill_once(model: nn.Module, ids: torch.Tensor) -> float:
    """Seconds of one prefill over ``ids`` (batch, tokens): the KV cache and the next token's logits.

    As in ``generate``, only the last position goes through the LM head when the model accepts
    ``logits_to_keep``; otherwise logits of every position are computed.
    """
    ids = ids.to(next(model.parameters()).device)
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    return _seconds(lambda: model(ids, use_cache=True, **extra))


@torch.inference_mode()
def generate_once(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """Seconds of greedy generation of exactly ``new_tokens`` tokens after ``ids``."""
    ids = ids.to(next(model.parameters()).device)
    pad = getattr(model.config, "pad_token_id", None)
    pad = pad if pad is not None else getattr(model.config, "eos_token_id", None)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
    return _seconds(lambda: model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs))


def compare_latency(
    models: Mapping[str, nn.Module],
    ids: torch.Tensor,
    new_tokens: int = 64,
    generate_prompt: int = 32,
    repeats: int = 5,
    warmup: int = 1,
    threads: int | None = None,
) -> dict[str, Latency]:
    """Time prefill over ``ids`` and generation of ``new_tokens`` for each model, interleaved.

    Args:
        models: Name -> model (all in eval mode).
        ids: Prompt for prefill, (batch, tokens).
        new_tokens: Tokens to generate; 0 skips generation.
        generate_prompt: Leading tokens of ``ids`` used as the generation prompt.
        repeats: Timed runs per model and measurement; medians are reported.
        warmup: Untimed runs per model first.
        threads: CPU threads to use (``None`` keeps the current setting).
    """
    prompt = ids[:, :generate_prompt]
    prefill: dict[str, list[float]] = {name: [] for name in models}
    generate: dict[str, list[float]] = {name: [] for name in models}
    with num_threads(threads) as used:
        for run in range(warmup + repeats):
            for name, model in models.items():
                p = prefill_once(model, ids)
                g = generate_once(model, prompt, new_tokens) if new_tokens else None
                if run >= warmup:
                    prefill[name].append(p)
                    if g is not None:
                        generate[name].append(g)
    return {
        name: Latency(
            statistics.median(prefill[name]),
            statistics.median(generate[name]) if generate[name] else None,
            prefill[name],
            generate[name],
            used,
            ids.shape[1],
            prompt.shape[1] if new_tokens else 0,
            new_tokens,
        )
        for name in models
    }


def paired_speedup(timed: Mapping[str, Latency], base: str, name: str) -> float:
    """Median over the interleaved rounds of ``base``'s prefill time over ``name``'s in the same
    round: a drift of the machine's speed during the runs (other jobs, clocks) cancels out of
    each ratio, where the ratio of two medians keeps it."""
    pairs = zip(timed[base].prefill_runs, timed[name].prefill_runs, strict=True)
    return statistics.median(b / n for b, n in pairs)


def measure_latency(model: nn.Module, ids: torch.Tensor, **kwargs) -> Latency:
    """:func:`compare_latency` for a single model."""
    return compare_latency({"model": model}, ids, **kwargs)["model"]


def interleaved_ms(
    models: Mapping[str, nn.Module],
    run: Callable[[nn.Module], object],
    repeats: int = 10,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[str, float]:
    """Median milliseconds of ``run(model)`` for each model, the models' runs alternating.

    For any model (vision, encoder): ``run`` is one forward pass, e.g. ``lambda m: m(images)``.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with num_threads(threads), torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in models.items():
                seconds = _seconds(lambda model=model: run(model))
                if i >= warmup:
                    times[name].append(seconds * 1000)
    return {name: statistics.median(t) for name, t in times.items()}
