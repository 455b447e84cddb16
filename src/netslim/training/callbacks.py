"""Training-time sparsity as plain callbacks that any training loop can call.

Papers:
    GMP: Zhu and Gupta 2017, https://arxiv.org/abs/1710.01878
    Movement pruning: Sanh, Wolf and Rush 2020, https://arxiv.org/abs/2005.07683
    RigL: Evci et al. 2020, https://arxiv.org/abs/1911.11134
    GraNet: Liu et al. 2021, https://arxiv.org/abs/2106.10404
    N:M fine-tuning: Mishra et al. 2021 (NVIDIA ASP), https://arxiv.org/abs/2104.08378

Recipe (a plain PyTorch loop)::

    sparsity = make_callback(model, GMPConfig(final_sparsity=0.8, end_step=2000, frequency=100))
    sparsity.on_train_begin()
    for step, (x, y) in enumerate(batches):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        sparsity.on_step_end(step)
    report = sparsity.on_train_end()

How masks are kept: each targeted weight has a boolean keep-mask. A gradient hook (registered
at ``on_train_begin``) lets the callback read the dense gradient (movement scores, RigL growth)
and then zeroes the gradient of pruned weights, and ``on_step_end`` zeroes the pruned weights
after every optimizer step. We chose zeroing over ``torch.nn.utils.parametrize`` so the model
keeps its plain modules and state dict (it saves, exports and structurally prunes as is), the
optimizer may be built before or after the callback, and RigL sees the dense gradient of
pruned weights for free. The cost: momentum or weight decay may move a pruned weight inside a
step; it is zeroed again before the next forward pass, so every forward sees the masked model.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from netslim.errors import ConfigError
from netslim.models.spec import stores_transposed
from netslim.ops.masks import layer_mask, nm_mask, row_mask
from netslim.training.config import GMPConfig, MovementConfig, NMConfig, RigLConfig, ScheduledConfig, SparsityConfig
from netslim.training.schedules import cosine_fraction, cubic_sparsity

_PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _as_matrix(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A weight-shaped tensor as (out, in): convs put input channels last, (out, *kernel, in)."""
    if stores_transposed(module):  # GPT-2's Conv1D stores (in, out)
        return tensor.t()
    return tensor.movedim(1, -1).reshape(tensor.shape[0], -1) if tensor.dim() > 2 else tensor


def _from_matrix(module: nn.Module, matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_as_matrix`."""
    if stores_transposed(module):
        return matrix.t()
    if like.dim() == 2:
        return matrix
    return matrix.reshape(like.shape[0], *like.shape[2:], like.shape[1]).movedim(-1, 1)


def prunable_modules(model: nn.Module, cfg: SparsityConfig) -> dict[str, nn.Module]:
    """The Linear / Conv modules of ``model`` that ``cfg`` selects, by full name.

    Raises:
        ConfigError: if nothing is selected.
    """
    found = {
        name: module for name, module in model.named_modules()
        if (isinstance(module, _PRUNABLE) or stores_transposed(module)) and cfg.selects(name)
    }
    if not found:
        raise ConfigError(f"targets={list(cfg.targets)} ignore={list(cfg.ignore)} select no Linear or Conv module")
    return found


class SparsityCallback:
    """Holds one keep-mask per targeted weight and keeps the pruned weights at zero.

    Hooks, in call order:
        ``on_train_begin()``: once, before the first step: hooks the gradients, sets the
        starting masks. ``on_step_end(step)``: after every ``optimizer.step()`` (``step`` is
        0-based): updates the masks when due, zeroes the pruned weights.
        ``on_train_end()``: removes the hooks and returns the per-layer report.

    Subclasses override only :meth:`start`, :meth:`due`, :meth:`update` and
    :meth:`observe_grad`.
    """

    def __init__(self, model: nn.Module, cfg: SparsityConfig):
        self.model, self.cfg = model, cfg
        self.modules = prunable_modules(model, cfg)
        self.masks = {name: torch.ones_like(m.weight, dtype=torch.bool) for name, m in self.modules.items()}
        self.next_step = 0
        self._handles: list = []

    # -- hooks a training loop calls -------------------------------------------------
    def on_train_begin(self) -> None:
        """Hook the gradients and apply the starting masks."""
        self._handles = [
            m.weight.register_hook(partial(self._on_grad, name)) for name, m in self.modules.items() if m.weight.requires_grad
        ]
        self.start()
        self.apply_masks()

    def on_step_end(self, step: int) -> None:
        """After ``optimizer.step()`` of step ``step``: update the masks if due, re-zero."""
        if self.due(step):
            self.update(step)
        self.apply_masks()
        self.next_step = step + 1

    def on_train_end(self) -> dict:
        """Remove the gradient hooks, zero the pruned weights one last time, return the report."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.apply_masks()
        return self.report()

    # -- what subclasses change --------------------------------------------------------
    def start(self) -> None:
        """Set the masks the training starts with (default: dense)."""

    def due(self, step: int) -> bool:
        """Whether the masks change at the end of ``step`` (default: never)."""
        return False

    def update(self, step: int) -> None:
        """Recompute the masks at the end of ``step``."""

    def observe_grad(self, name: str, grad: torch.Tensor) -> None:
        """See the dense gradient of weight ``name`` before pruned entries are zeroed."""

    # -- the shared mechanism ----------------------------------------------------------
    def _on_grad(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        self.observe_grad(name, grad)
        return grad * self.masks[name]

    def keep_mask(self, name: str, scores: torch.Tensor, sparsity: float, compare: str = "layer") -> torch.Tensor:
        """Keep-mask of weight ``name`` from weight-shaped ``scores`` (larger = keep)."""
        module = self.modules[name]
        matrix = _as_matrix(module, scores.float())
        mask = (row_mask if compare == "row" else layer_mask)(matrix, sparsity)
        return _from_matrix(module, mask, scores)

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every pruned weight."""
        for name, module in self.modules.items():
            module.weight.mul_(self.masks[name])

    def sparsity(self) -> float:
        """Fraction of pruned weights over all targeted layers."""
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        return pruned / sum(m.numel() for m in self.masks.values())

    def report(self) -> dict:
        """Overall and per-layer sparsity of the masks."""
        layers = {name: 1.0 - m.float().mean().item() for name, m in self.masks.items()}
        return {"method": self.cfg.method, "sparsity": self.sparsity(), "layers": layers}


class ScheduledCallback(SparsityCallback):
    """Masks from a score, at the cubic schedule's sparsity, every ``frequency`` steps."""

    cfg: ScheduledConfig

    def target(self, step: int) -> float:
        """The schedule's sparsity at ``step``."""
        c = self.cfg
        return cubic_sparsity(step, initial=c.initial_sparsity, final=c.final_sparsity,
                              begin_step=c.begin_step, end_step=c.end_step, frequency=c.frequency)

    def due(self, step: int) -> bool:
        c = self.cfg
        on_grid = (step - c.begin_step) % c.frequency == 0
        return c.begin_step <= step <= c.end_step and (on_grid or step == c.end_step)

    def scores(self, name: str) -> torch.Tensor:
        """Weight-shaped importance of weight ``name`` (larger = keep)."""
        raise NotImplementedError

    def update(self, step: int) -> None:
        sparsity = self.target(step)
        for name in self.modules:
            self.masks[name] = self.keep_mask(name, self.scores(name), sparsity, self.cfg.compare)


class GMPCallback(ScheduledCallback):
    """Gradual magnitude pruning. Pruned weights are zero, so they stay the lowest: masks only shrink."""

    def scores(self, name: str) -> torch.Tensor:
        return self.modules[name].weight.detach().abs()


class MovementCallback(ScheduledCallback):
    """Hard movement pruning: keep the weights moving away from zero.

    The score of each weight is the running sum of ``-W * dL/dW`` over every backward pass
    since training began (the paper's accumulated score without its learning-rate factor,
    which does not change the ranking under a constant rate). A pruned weight is zero, so its
    score stops changing: unlike the paper's straight-through estimator it cannot regrow.
    """

    def __init__(self, model: nn.Module, cfg: MovementConfig):
        super().__init__(model, cfg)
        self.movement = {name: torch.zeros_like(m.weight, dtype=torch.float32) for name, m in self.modules.items()}

    def observe_grad(self, name: str, grad: torch.Tensor) -> None:
        self.movement[name].sub_(self.modules[name].weight.detach().float() * grad.float())

    def scores(self, name: str) -> torch.Tensor:
        return self.movement[name]


class RigLCallback(ScheduledCallback):
    """Drop the smallest live weights, regrow the pruned ones with the largest gradient.

    Regrown weights start at zero (as in RigL) and the dropped ones are not regrown in the same
    update. The gradient used is the dense one of the update step (summed over its backward
    passes when gradients are accumulated).
    """

    def __init__(self, model: nn.Module, cfg: RigLConfig):
        super().__init__(model, cfg)
        self.dense_grads: dict[str, torch.Tensor] = {}

    def start(self) -> None:
        for name, module in self.modules.items():
            self.masks[name] = self.keep_mask(name, module.weight.detach().abs(), self.cfg.initial_sparsity)

    def observe_grad(self, name: str, grad: torch.Tensor) -> None:
        if self.due(self.next_step):
            previous = self.dense_grads.get(name)
            self.dense_grads[name] = grad.detach().clone() if previous is None else previous + grad

    def update(self, step: int) -> None:
        c = self.cfg
        fraction = cosine_fraction(step, initial=c.drop_fraction, begin_step=c.begin_step, end_step=c.end_step)
        sparsity = self.target(step)
        for name, module in self.modules.items():
            magnitude = module.weight.detach().abs() * self.masks[name]
            keep = self.keep_mask(name, magnitude, sparsity)  # GraNet's gradual step; no-op for RigL
            grad = self.dense_grads.get(name)
            if grad is not None and fraction > 0:
                keep = _drop_and_grow(keep, magnitude, grad.abs(), int(fraction * int(keep.sum())))
            self.masks[name] = keep
        self.dense_grads = {}


def _drop_and_grow(keep: torch.Tensor, magnitude: torch.Tensor, grad: torch.Tensor, count: int) -> torch.Tensor:
    """Swap the ``count`` live entries of smallest magnitude for the ``count`` pruned ones of largest gradient."""
    count = min(count, int((~keep).sum()))
    if count <= 0:
        return keep
    flat_keep, inf = keep.flatten(), torch.tensor(float("inf"))
    drop = torch.topk(torch.where(flat_keep, magnitude.flatten().float(), inf), count, largest=False).indices
    grow = torch.topk(torch.where(flat_keep, -inf, grad.flatten().float()), count).indices
    out = flat_keep.clone()
    out[drop] = False
    out[grow] = True
    return out.view_as(keep)


class NMCallback(SparsityCallback):
    """N:M masks chosen by magnitude at ``on_train_begin`` and kept while fine-tuning."""

    cfg: NMConfig

    def start(self) -> None:
        n, m = self.cfg.nm
        for name, module in self.modules.items():
            matrix = _as_matrix(module, module.weight.detach().abs().float())
            inputs = module.weight.shape[1] if module.weight.dim() > 2 else matrix.shape[1]  # groups never straddle a kernel position
            if inputs % m:
                raise ConfigError(f"{name}: {inputs} input channels, not a multiple of {m}; add '{name}' to ignore")
            self.masks[name] = _from_matrix(module, nm_mask(matrix, n, m), module.weight)


_CALLBACKS = {GMPConfig: GMPCallback, MovementConfig: MovementCallback, RigLConfig: RigLCallback, NMConfig: NMCallback}


def make_callback(model: nn.Module, cfg: SparsityConfig) -> SparsityCallback:
    """The callback for ``cfg`` (a :class:`GMPConfig`, :class:`MovementConfig`, ...) on ``model``.

    Raises:
        ConfigError: if the config type has no callback or selects no module.
    """
    for cls, callback in _CALLBACKS.items():
        if isinstance(cfg, cls):
            return callback(model, cfg)
    raise ConfigError(f"no sparsity callback for {type(cfg).__name__}; use one of {[c.__name__ for c in _CALLBACKS]}")
