"""Physical layer surgery: remove attention heads, MLP neurons and whole blocks.

Every cut slices ``nn.Linear`` weights in place (the module objects stay, so hooks and
references survive), updates the attention module's head bookkeeping, and, where every
block ends up with the same sizes, rewrites the config so that plain
``AutoModelForCausalLM.from_pretrained`` rebuilds the smaller model. Attributes a config
cannot express (different head counts per layer) are listed in the module's
``netslim_attrs`` so that ``netslim.load`` restores them.

Example:
    >>> adapter = ModelAdapter.from_model(model)
    >>> prune_heads(adapter, 0, keep_q=torch.tensor([0, 1]), keep_kv=torch.tensor([0]))
    >>> prune_neurons(adapter, 0, keep=torch.arange(64))
    >>> remove_blocks(adapter, [3, 7])
    >>> sync_config(adapter)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from netslim.errors import ConfigError, UnsupportedModelError
from netslim.models.adapter import ModelAdapter

# Attention attributes that count heads; whichever a family's module has is kept in step.
_HEAD_ATTRS = ("num_heads", "num_key_value_heads", "num_key_value_groups")


def check_width_supported(adapter: ModelAdapter) -> None:
    """Raise if head and neuron removal is not implemented for the adapter's family.

    Raises:
        UnsupportedModelError: for fused q/k/v (GPT-2) or (in, out) weights (Conv1D).
    """
    spec = adapter.spec
    if spec.fused_qkv or spec.transposed_weights or spec.parallel_blocks:
        raise UnsupportedModelError(
            f"width pruning does not support the '{spec.name}' family yet (fused q/k/v or Conv1D "
            "weights); use depth pruning or an unstructured method"
        )


def slice_rows(linear: nn.Linear, keep: torch.Tensor) -> None:
    """Keep only output rows ``keep`` of ``linear`` (and its bias)."""
    keep = keep.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data[keep].clone(), requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data[keep].clone(), requires_grad=linear.bias.requires_grad)
    linear.out_features = int(keep.numel())


def slice_cols(linear: nn.Linear, keep: torch.Tensor) -> None:
    """Keep only input columns ``keep`` of ``linear``."""
    keep = keep.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data[:, keep].clone(), requires_grad=linear.weight.requires_grad)
    linear.in_features = int(keep.numel())


def add_bias(linear: nn.Linear, delta: torch.Tensor) -> None:
    """Add ``delta`` to the bias of ``linear``, creating the bias if it has none."""
    delta = delta.to(linear.weight.device, linear.weight.dtype)
    if linear.bias is None:
        linear.bias = nn.Parameter(delta.clone(), requires_grad=linear.weight.requires_grad)
    else:
        linear.bias.data.add_(delta)


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Row (or column) indices of the channels of ``heads``."""
    return (heads.long().unsqueeze(1) * head_dim + torch.arange(head_dim)).flatten()


def attention_module(adapter: ModelAdapter, index: int) -> nn.Module:
    """The module that owns block ``index``'s attention projections (``self_attn``)."""
    parent = adapter.spec.attn_out.rpartition(".")[0]
    return adapter.block_part(index, parent) if parent else adapter.blocks[index]


def head_counts(adapter: ModelAdapter, index: int) -> tuple[int, int]:
    """(query heads, key-value heads) block ``index`` has now, read from its weights."""
    hd = adapter.head_dim
    q = adapter.block_part(index, adapter.spec.attn_in[0]).out_features // hd
    kv = adapter.block_part(index, adapter.spec.attn_in[1]).out_features // hd
    return q, kv


def intermediate_size(adapter: ModelAdapter, index: int) -> int:
    """Number of MLP neurons block ``index`` has now."""
    return adapter.block_part(index, adapter.spec.mlp_out).in_features


def prune_heads(adapter: ModelAdapter, index: int, keep_q: torch.Tensor, keep_kv: torch.Tensor) -> None:
    """Keep query heads ``keep_q`` and key-value heads ``keep_kv`` of block ``index``.

    The kept query heads must read the kept key-value heads in order: with ``g`` query heads
    per kept key-value head, kept query head ``i`` reads kept key-value head ``i // g``.

    Raises:
        ConfigError: if the counts leave no head or do not form equal groups.
    """
    n_q, n_kv = int(keep_q.numel()), int(keep_kv.numel())
    if n_q == 0 or n_kv == 0 or n_q % n_kv:
        raise ConfigError(f"block {index}: {n_q} query heads cannot share {n_kv} key-value heads evenly")
    spec, hd = adapter.spec, adapter.head_dim
    q_proj, k_proj, v_proj = (adapter.block_part(index, p) for p in spec.attn_in)
    slice_rows(q_proj, head_rows(keep_q, hd))
    slice_rows(k_proj, head_rows(keep_kv, hd))
    slice_rows(v_proj, head_rows(keep_kv, hd))
    slice_cols(adapter.block_part(index, spec.attn_out), head_rows(keep_q, hd))
    _set_head_attrs(attention_module(adapter, index), n_q, n_kv)


def _set_head_attrs(attn: nn.Module, n_q: int, n_kv: int) -> None:
    values = {"num_heads": n_q, "num_key_value_heads": n_kv, "num_key_value_groups": n_q // n_kv}
    record = {}
    for name in _HEAD_ATTRS:
        if hasattr(attn, name):
            setattr(attn, name, values[name])
            record[name] = values[name]
    attn.netslim_attrs = record


def prune_neurons(adapter: ModelAdapter, index: int, keep: torch.Tensor) -> None:
    """Keep MLP neurons ``keep`` of block ``index`` (rows of gate/up, columns of down)."""
    for path in adapter.spec.mlp_in:
        slice_rows(adapter.block_part(index, path), keep)
    slice_cols(adapter.block_part(index, adapter.spec.mlp_out), keep)


def remove_blocks(adapter: ModelAdapter, indices: Sequence[int]) -> None:
    """Delete blocks ``indices`` and renumber the rest (cache slots, config layer lists).

    Raises:
        ConfigError: if an index is out of range or no block would remain.
    """
    drop = sorted(set(int(i) for i in indices))
    n = adapter.num_blocks
    if any(i < 0 or i >= n for i in drop) or len(drop) >= n:
        raise ConfigError(f"cannot remove blocks {drop} from a model of {n} blocks; keep at least one")
    keep = [i for i in range(n) if i not in drop]
    blocks = adapter.blocks
    kept = [blocks[i] for i in keep]
    for _ in range(n):
        del blocks[0]
    for new_index, block in enumerate(kept):
        blocks.append(block)
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    config = adapter.config
    config.num_hidden_layers = len(keep)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [config.layer_types[i] for i in keep]


def sync_config(adapter: ModelAdapter) -> bool:
    """Write uniform head counts and MLP width into the config; return whether they were written.

    When blocks differ, or when the config class refuses the new sizes (Llama's, for one,
    wants the hidden size to be a multiple of the head count even with ``head_dim`` given),
    the config keeps its original sizes and ``netslim.load`` rebuilds the modules from the
    saved shapes and ``netslim_attrs``.
    """
    spec = adapter.spec
    sizes = {(*head_counts(adapter, i), intermediate_size(adapter, i)) for i in range(adapter.num_blocks)}
    if len(sizes) != 1 or spec.head_dim_attr is None or spec.num_kv_heads_attr is None:
        return False
    n_q, n_kv, inter = sizes.pop()
    values = {spec.head_dim_attr: adapter.head_dim,  # pinned: the head count changes
              spec.num_heads_attr: n_q, spec.num_kv_heads_attr: n_kv, spec.intermediate_attr: inter}
    trial = copy.deepcopy(adapter.config)
    for attr, value in values.items():
        setattr(trial, attr, value)
    if not _valid_config(trial):
        return False
    for attr, value in values.items():
        setattr(adapter.config, attr, value)
    return True


def _valid_config(config) -> bool:
    """Whether the config passes its class's own validation (what ``save_pretrained`` and
    ``from_pretrained`` run); configs without one pass."""
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return True
    try:
        validate()
    except Exception:  # noqa: BLE001 (transformers raises ValueError or huggingface_hub's StrictDataclassError)
        return False
    return True
