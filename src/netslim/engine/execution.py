"""Where and how a job computes: the device, the floating type of the weights and forwards, and
the batch of calibration or evaluation windows run together.

Statistics (``X^T X``, norms, moments) are always accumulated in float32 or float64 whatever the
weights' type (:mod:`netslim.engine.stats`), and every method solves in float32 before writing
its result back in the weights' type.

Example:
    >>> Execution(device="auto", dtype="bfloat16", batch_size=8).torch_device()
    device(type='cpu')   # on a machine without CUDA
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from netslim.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


@dataclass(frozen=True)
class Execution:
    """How a job runs; checked when built, so a typo fails before any work.

    Attributes:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (the first CUDA device if there is
            one, else the CPU). Under ``torchrun``, ``cuda`` and ``auto`` mean each rank's own
            device (``cuda:LOCAL_RANK``).
        dtype: ``float32``, ``bfloat16`` or ``float16``: the weights as loaded, and the
            precision of every forward. Quantized and pruned layers are written in it too.
        batch_size: Windows per forward, in calibration and in evaluation. Results do not
            depend on it beyond float rounding; a larger batch uses more activation memory.
        offload: Read the decoder blocks from the checkpoint one at a time, compress,
            evaluate and write each, then free it (:mod:`netslim.offload`); ``None``: do so
            when the model would not fit in the memory available.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    offload: bool | None = False

    def __post_init__(self) -> None:
        if not _DEVICE.fullmatch(self.device):
            raise ConfigError(f"device '{self.device}': use cpu, cuda, cuda:N or auto")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype '{self.dtype}': use one of {', '.join(DTYPES)}")
        check_batch_size(self.batch_size)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The weights' torch dtype."""
        return DTYPES[self.dtype]

    def torch_device(self) -> torch.device:
        """The device to compute on.

        Raises:
            ConfigError: for a CUDA device this machine does not have.
        """
        if self.device == "auto":
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(self.device)
        if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))  # torchrun: one GPU per rank
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ConfigError(f"--device {self.device}: this machine has no CUDA device (torch "
                                  f"{torch.__version__}); use --device cpu or auto")
            if (device.index or 0) >= count:
                raise ConfigError(f"--device {self.device}: this machine has {count} CUDA device(s), "
                                  f"cuda:0 to cuda:{count - 1}")
        return device

    def place(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device and cast its floating tensors to the dtype (codes and
        masks keep their integer or boolean types); returns it."""
        return model.to(device=self.torch_device(), dtype=self.torch_dtype)

    def describe(self) -> dict:
        """What the report records: the resolved device (with its name), dtype and batch size."""
        device = self.torch_device()
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        return {"device": str(device), "device_name": name, "dtype": self.dtype, "batch_size": self.batch_size,
                "threads": torch.get_num_threads(), "offload": bool(self.offload)}


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch of fewer than one window."""
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size}: use at least 1 window per forward")


def available_memory_bytes() -> int | None:
    """Memory this process may still use: the smaller of the kernel's ``MemAvailable`` and what
    its cgroup's ``memory.max`` leaves; ``None`` where neither is readable."""
    limits = []
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        cgroup = open("/proc/self/cgroup", encoding="ascii").read().strip().split("::")[-1]
        base = f"/sys/fs/cgroup{cgroup}"
        limit = open(f"{base}/memory.max", encoding="ascii").read().strip()
        if limit != "max":
            used = int(open(f"{base}/memory.current", encoding="ascii").read())
            limits.append(int(limit) - used)
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None
