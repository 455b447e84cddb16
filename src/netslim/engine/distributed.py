"""Calibration split across processes with ``torch.distributed`` (any backend: gloo on CPUs,
nccl on GPUs).

When the caller has initialized a process group (``torchrun``, or
``torch.distributed.init_process_group``), each rank runs the engine on its share of the
calibration windows (every ``world``-th one, from its rank) and every layer statistic is summed
over the ranks before a method reads it, so every rank sees the statistics of all the windows
and compresses the same way; perplexities are split the same way and their sums added; the
caller writes the result from one rank (:func:`is_writer`). Without a process group (or with
one rank) nothing changes. ``netslim compress`` under ``torchrun`` joins the group torchrun
describes (:func:`join_from_env`).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from netslim.errors import ConfigError


def world_size() -> int:
    """Processes in the initialized group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes the results: rank 0, or the only process."""
    return world_size() == 1 or dist.get_rank() == 0


def join_from_env(cuda: bool) -> None:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` above 1 in the environment,
    with ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``), unless one is joined already: nccl for
    CUDA devices, gloo on the CPU."""
    if world_size() > 1 or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def shard(ids: torch.Tensor, what: str = "calibration") -> torch.Tensor:
    """This rank's windows (``what``: calibration or evaluation): every ``world_size()``-th,
    from its rank.

    Raises:
        ConfigError: if there are fewer windows than ranks.
    """
    size = world_size()
    if size == 1:
        return ids
    if ids.shape[0] < size:
        raise ConfigError(f"{ids.shape[0]} {what} windows cannot be split over {size} processes; "
                          f"use at least {size} windows or fewer processes")
    return ids[dist.get_rank()::size]


def all_sum(tensors: list[torch.Tensor | None]) -> None:
    """Sum each tensor in place over the ranks (``None`` entries skipped), in one order on
    every rank."""
    if world_size() == 1:
        return
    for tensor in tensors:
        if tensor is not None:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

