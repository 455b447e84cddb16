"""Sparsity and drop-fraction schedules: pure functions of the step.

Cubic schedule: Zhu and Gupta, "To prune, or not to prune: exploring the efficacy of pruning for
model compression", 2017 (https://arxiv.org/abs/1710.01878), eq. (1):

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3

for t in {t0, t0 + dt, ..., t0 + n * dt}: sparsity rises fast while the network is redundant
and slowly near the target. Cosine drop fraction: Evci et al., "Rigging the Lottery", 2020
(https://arxiv.org/abs/1911.11134), section 3.
"""

from __future__ import annotations

import math


def cubic_sparsity(
    step: int, *, initial: float, final: float, begin_step: int, end_step: int, frequency: int = 1
) -> float:
    """Target sparsity at ``step`` under the cubic schedule.

    The schedule holds ``initial`` before ``begin_step``, moves only on steps
    ``begin_step + k * frequency`` (the value stays constant in between), and is exactly
    ``final`` from ``end_step`` on, even when ``end_step - begin_step`` is not a multiple of
    ``frequency``.

    Args:
        step: The optimizer step (0-based).
        initial: Sparsity at ``begin_step`` (``s_i``).
        final: Sparsity reached at ``end_step`` (``s_f``).
        begin_step: First pruning step (``t0``).
        end_step: Step at which ``final`` is reached (``t0 + n * dt``).
        frequency: Steps between mask updates (``dt``).
    """
    if step >= end_step:
        return final
    if step <= begin_step:
        return initial
    last_update = begin_step + (step - begin_step) // frequency * frequency
    progress = (last_update - begin_step) / (end_step - begin_step)
    return initial + (final - initial) * (1.0 - (1.0 - progress) ** 3)  # eq. (1), exact at t0


def cosine_fraction(step: int, *, initial: float, begin_step: int, end_step: int) -> float:
    """RigL's drop fraction: ``initial / 2 * (1 + cos(pi * progress))``, 0 from ``end_step`` on."""
    if step >= end_step:
        return 0.0
    progress = max(step - begin_step, 0) / (end_step - begin_step)
    return initial / 2 * (1 + math.cos(math.pi * progress))
