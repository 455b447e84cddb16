"""Training-time sparsity: callbacks for any training loop, schedules and distillation.

See ``docs/training.md``. The ``transformers.Trainer`` adapter lives in
:mod:`netslim.training.hf` and is imported only when used.
"""

from netslim.training.callbacks import (
    GMPCallback,
    MovementCallback,
    NMCallback,
    RigLCallback,
    SparsityCallback,
    make_callback,
)
from netslim.training.config import GMPConfig, MovementConfig, NMConfig, RigLConfig, SparsityConfig
from netslim.training.distill import DistillConfig, distillation_loss, kd_divergence
from netslim.training.schedules import cosine_fraction, cubic_sparsity

__all__ = [
    "DistillConfig",
    "GMPCallback",
    "GMPConfig",
    "MovementCallback",
    "MovementConfig",
    "NMCallback",
    "NMConfig",
    "RigLCallback",
    "RigLConfig",
    "SparsityCallback",
    "SparsityConfig",
    "cosine_fraction",
    "cubic_sparsity",
    "distillation_loss",
    "kd_divergence",
    "make_callback",
]
