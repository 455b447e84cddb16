"""What recovery trains, and how it keeps the structure compression left.

Three modes, each on the decoder blocks' projections (``nn.Linear``) and norms:

- ``lora``: a low-rank update on every projection (Hu et al., "LoRA", 2021,
  https://arxiv.org/abs/2106.09685), ``W + (alpha / r) * (B @ A) * M`` with ``B`` starting at
  zero, where ``M`` is the layer's sparsity mask. On a layer with zeros the update is a
  ``torch.nn.utils.parametrize`` parametrization of the weight, so what trains is exactly what
  is merged: the mask is inside the product, zeros stay exact zeros and N:M groups stay N:M.
  (peft adds ``B (A x)`` beside a layer, which cannot be masked, so merging its adapter into a
  sparse layer would drop part of what was learned.) On a layer without zeros (dense, or
  structurally pruned: its removed heads and neurons are gone from the shapes) the update runs
  beside the layer as ``B (A x)``, which is cheaper to train, and is merged the same way.
- ``norms``: only the norms' scales and the projections' biases train (PERP: Zimmer et al.,
  "PERP: Rethinking the Prune-Retrain Paradigm in the Era of LLMs", 2023,
  https://arxiv.org/abs/2312.15230), about 0.1% of the parameters.
- ``masked``: every projection weight trains with its gradient multiplied by its mask, and the
  mask is applied again after each step.

The embeddings and the head stay frozen in every mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize


class LowRankUpdate(nn.Module):
    """LoRA's ``scale * B @ A`` for one weight, applied one of two ways.

    A layer with zeros takes it as a parametrization of its weight, ``W + scale * (B @ A) * M``
    (:meth:`forward`), so the mask is inside the product. A dense ``nn.Linear`` (no zeros: a
    dense or structurally pruned layer) takes it beside the layer, ``y + scale * B (A x)``
    (:meth:`hook`), which needs no gradient of the full weight and trains faster; the two are
    the same function of the input.
    """

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, mask: torch.Tensor | None,
                 generator: torch.Generator):
        super().__init__()
        rows, cols = weight.shape
        rank = min(rank, rows, cols)
        a = torch.empty(rank, cols, dtype=torch.float32)
        bound = 1 / math.sqrt(cols)  # LoRA's A init: kaiming-uniform with a = sqrt(5)
        a.uniform_(-bound, bound, generator=generator)
        self.A = nn.Parameter(a.to(weight.dtype))
        self.B = nn.Parameter(torch.zeros(rows, rank, dtype=weight.dtype))
        self.scale = alpha / rank
        self.register_buffer("mask", mask, persistent=False)

    def delta(self) -> torch.Tensor:
        """The (masked) update of the weight."""
        delta = (self.B @ self.A) * self.scale
        return delta if self.mask is None else delta * self.mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()

    def hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + F.linear(F.linear(inputs[0], self.A), self.B) * self.scale


def _mask(weight: torch.Tensor) -> torch.Tensor | None:
    zeros = weight == 0
    return None if not bool(zeros.any()) else (~zeros).to(weight.dtype)


def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the families' own norm classes (named ``*Norm``)."""
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or type(module).__name__.endswith("Norm")


class Trainable:
    """The parameters one recovery mode trains, set up on ``projections`` (name -> Linear) and
    ``norms`` (name -> norm module) of a model (freeze everything else first), and how to fold
    them back in.

    Args:
        mode: ``lora``, ``norms`` or ``masked``.
    """

    def __init__(self, mode: str, projections: dict[str, nn.Linear], norms: dict[str, nn.Module],
                 rank: int = 8, alpha: float = 16.0, seed: int = 0):
        self.mode = mode
        self.projections = projections
        self.masks = {name: _mask(m.weight.detach()) for name, m in projections.items()}
        self.params: dict[str, nn.Parameter] = {}
        self._hooks = []
        generator = torch.Generator().manual_seed(seed)
        self.updates: dict[str, LowRankUpdate] = {}
        if mode == "lora":
            for name, module in projections.items():
                lora = LowRankUpdate(module.weight.detach(), rank, alpha, self.masks[name], generator)
                if self.masks[name] is None and isinstance(module, nn.Linear):
                    self._hooks.append(module.register_forward_hook(lora.hook))
                else:
                    parametrize.register_parametrization(module, "weight", lora)
                    module.parametrizations.weight.original.requires_grad_(False)
                self.updates[name] = lora
                self.params[f"{name}.lora_A"] = lora.A
                self.params[f"{name}.lora_B"] = lora.B
        elif mode == "norms":
            for name, module in {**norms, **projections}.items():
                for pname, p in module.named_parameters(recurse=False):
                    if pname != "weight" or name in norms:
                        self.params[f"{name}.{pname}"] = p
        elif mode == "masked":
            for name, module in projections.items():
                self.params[f"{name}.weight"] = module.weight.requires_grad_(True)
                if module.bias is not None:
                    self.params[f"{name}.bias"] = module.bias
                mask = self.masks[name]
                if mask is not None:
                    self._hooks.append(module.weight.register_hook(lambda g, m=mask: g * m))
            for name, module in norms.items():
                for pname, p in module.named_parameters(recurse=False):
                    self.params[f"{name}.{pname}"] = p
        else:
            raise ValueError(f"unknown recovery mode {mode!r}")
        for p in self.params.values():
            p.requires_grad_(True)

    def reapply_masks(self) -> None:
        """Masked mode: zero the pruned weights again (AdamW leaves them at zero; this makes it exact)."""
        if self.mode != "masked":
            return
        with torch.no_grad():
            for name, module in self.projections.items():
                if self.masks[name] is not None:
                    module.weight.mul_(self.masks[name])

    def merge(self) -> None:
        """Fold LoRA updates into the weights (parametrizations and hooks go); drop the gradient hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        for name, lora in self.updates.items():
            module = self.projections[name]
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            else:
                with torch.no_grad():
                    module.weight.add_(lora.delta().to(module.weight.dtype))
        self.updates = {}
        self.reapply_masks()

    def count(self) -> int:
        """Trained parameters."""
        return sum(p.numel() for p in self.params.values())
