"""Routed experts of a mixture-of-experts block as one ``nn.Linear`` per projection per expert.

``transformers`` keeps a block's experts fused: ``gate_up_proj`` (experts, 2 * inter, hidden)
and ``down_proj`` (experts, hidden, inter), computed by one module that loops over the experts
the router picked. Compression needs each expert's projections as layers of their own: their
input statistics gathered over the tokens routed to that expert only, their weights pruned or
quantized, recorded and stored like any other layer. :class:`RoutedExperts` holds them so and
computes what the fused module computes (to float rounding): the same call (hidden states, the router's top-k
expert indices and weights), the experts taken in the same order, each one's output scaled
by its routing weight and added to the tokens it serves.

:func:`unfuse_experts` swaps the fused modules of a model for it (the adapter calls it once);
``netslim.load`` rebuilds it from the folder's ``netslim.json`` (module kind
``routed_experts``), and :func:`fuse_state` writes its weights back in the fused layout for a
folder plain ``transformers`` loads. An expert that calibration never reaches has no input
statistics: the engine then compresses it from its weights alone (:mod:`netslim.engine.sequential`).
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.errors import UnsupportedModelError
from netslim.export.modules import register_module_kind
from netslim.models.spec import ExpertsSpec


def _activation(name: str) -> nn.Module:
    from transformers.activations import ACT2FN  # noqa: PLC0415  (transformers is heavy to import)

    return ACT2FN[name]


class ExpertMLP(nn.Module):
    """One expert: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, hidden: int, intermediate: int, act: str, device=None, dtype=None):
        super().__init__()
        kwargs = dict(bias=False, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden, intermediate, **kwargs)
        self.up_proj = nn.Linear(hidden, intermediate, **kwargs)
        self.down_proj = nn.Linear(intermediate, hidden, **kwargs)
        self.act_fn = _activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


@register_module_kind("routed_experts")
class RoutedExperts(nn.ModuleList):
    """A block's routed experts, expert ``e`` at index ``e`` (state keys ``experts.e.gate_proj.weight``).

    Args:
        num_experts / hidden / intermediate: How many experts, and each one's widths.
        act: The ``transformers`` activation name (``config.hidden_act``).
    """

    # netslim.json lists the compressed projections inside on their own (module_specs)
    rebuilds_children = False

    def __init__(self, num_experts: int, hidden: int, intermediate: int, act: str, device=None, dtype=None):
        super().__init__([ExpertMLP(hidden, intermediate, act, device, dtype) for _ in range(num_experts)])
        self.hidden, self.intermediate, self.act = hidden, intermediate, act

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """Tokens (tokens, hidden), each one's top-k experts and routing weights (tokens, k)."""
        out = torch.zeros_like(hidden_states)
        routed = top_k_index.t()  # (k, tokens): slot-major, as transformers walks them
        for e, expert in enumerate(self):
            slot, token = torch.where(routed == e)
            if token.numel() == 0:
                continue
            y = expert(hidden_states[token]) * top_k_weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out

    def export_spec(self) -> dict:
        return {"num_experts": len(self), "hidden": self.hidden, "intermediate": self.intermediate, "act": self.act}

    @classmethod
    def from_spec(cls, spec: dict) -> RoutedExperts:
        return cls(spec["num_experts"], spec["hidden"], spec["intermediate"], spec["act"])

    @classmethod
    def from_fused(cls, fused: nn.Module, act: str) -> RoutedExperts:
        """The experts of a fused ``transformers`` module, weights copied (none on the meta device).

        Raises:
            UnsupportedModelError: if the module does not hold exactly ``gate_up_proj`` and
                ``down_proj`` of the fused layout.
        """
        params = dict(fused.named_parameters(recurse=False))
        gate_up, down = params.get("gate_up_proj"), params.get("down_proj")
        if set(params) != {"gate_up_proj", "down_proj"} or gate_up.dim() != 3 or down.dim() != 3:
            raise UnsupportedModelError(
                f"{type(fused).__name__} does not hold its experts as gate_up_proj and down_proj without biases; "
                "netslim handles the Mixtral and Qwen-MoE layouts of transformers")
        num, double, hidden = gate_up.shape
        inter = double // 2
        experts = cls(num, hidden, inter, act, device=gate_up.device, dtype=gate_up.dtype)
        if gate_up.device.type != "meta":
            with torch.no_grad():
                for e, expert in enumerate(experts):
                    expert.gate_proj.weight.copy_(gate_up[e, :inter])
                    expert.up_proj.weight.copy_(gate_up[e, inter:])
                    expert.down_proj.weight.copy_(down[e])
        return experts


def fuse_state(state: dict[str, torch.Tensor], name: str, num_experts: int) -> None:
    """Put the per-expert weights of experts module ``name`` in ``state`` back into the fused
    ``transformers`` layout (``{name}.gate_up_proj``, ``{name}.down_proj``), in place; the
    inverse of :meth:`RoutedExperts.from_fused` for a state dict."""
    def pop(e: int, proj: str) -> torch.Tensor:
        return state.pop(f"{name}.{e}.{proj}.weight")

    experts = range(num_experts)
    gate_up = [torch.cat([pop(e, "gate_proj"), pop(e, "up_proj")]) for e in experts]
    state[f"{name}.gate_up_proj"] = torch.stack(gate_up)
    state[f"{name}.down_proj"] = torch.stack([pop(e, "down_proj") for e in experts])


def unfuse_experts(blocks: nn.ModuleList, spec: ExpertsSpec, config) -> None:
    """Replace each block's fused experts (at ``spec.path``) by :class:`RoutedExperts`, in place.

    Blocks already unfused are left as they are.

    Raises:
        UnsupportedModelError: if a block has no routed experts (a config whose
            ``mlp_only_layers`` or ``decoder_sparse_step`` makes some blocks dense).
    """
    parent_path, _, attr = spec.path.rpartition(".")
    for index, block in enumerate(blocks):
        parent = block.get_submodule(parent_path) if parent_path else block
        fused = getattr(parent, attr, None)
        if isinstance(fused, RoutedExperts):
            continue
        if fused is None:
            raise UnsupportedModelError(
                f"block {index} of this {config.model_type} model has a dense MLP, not routed experts; netslim "
                "compresses mixtures of experts whose every block routes (mlp_only_layers empty, decoder_sparse_step 1)")
        setattr(parent, attr, RoutedExperts.from_fused(fused, config.hidden_act))
