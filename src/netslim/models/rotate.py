"""Model surgery for SliceGPT: fuse norms, rotate the residual stream, slice it.

The residual stream of a pre-norm transformer can be rotated by any orthogonal Q without
changing the model's function, once every RMSNorm's weight is moved into the Linear layers
that read its output (an unscaled RMSNorm commutes with Q). Each function here does one step
of that on a model described by its :class:`ModelAdapter`; the calibration loop that chooses
Q block by block lives in :mod:`netslim.methods.slicegpt`.

Bases are (d, k) matrices of orthonormal columns in float64: the first k principal
directions of a signal. With k = d the rotation is exact; with k < d it slices.
"""

from __future__ import annotations

import torch
from torch import nn

from netslim.errors import UnsupportedModelError
from netslim.models.adapter import ModelAdapter, get_submodule
from netslim.models.sliced import ResizedEmbedding, SlicedDecoderLayer, UnscaledRMSNorm
from netslim.models.spec import NormKind
from netslim.ops.rotation import rotate_input, rotate_output


def check_sliceable(adapter: ModelAdapter) -> None:
    """Raise if the family's blocks cannot be rotated exactly.

    Raises:
        UnsupportedModelError: naming the family and what it has that slicing cannot handle.
    """
    spec = adapter.spec
    problems = {
        "LayerNorm (mean subtraction is not implemented)": spec.norm_kind is not NormKind.RMSNORM,
        "post-attention/post-MLP sandwich norms": bool(spec.post_attn_norm or spec.post_mlp_norm),
        "parallel attention and MLP": spec.parallel_blocks,
        "fused or transposed projections": spec.fused_qkv or spec.transposed_weights,
        "several embeddings": len(spec.embeddings) != 1,
        "a custom embedding": not isinstance(adapter.embeddings[0], nn.Embedding),
        "routed experts (a mixture of experts)": spec.experts is not None,
    }
    found = [name for name, present in problems.items() if present]
    if found:
        raise UnsupportedModelError(
            f"slicegpt cannot slice {adapter.config.model_type} models ({'; '.join(found)}); supported: Llama-style "
            "RMSNorm decoders (llama, mistral, qwen2, qwen3, gemma)"
        )


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def block_parts(adapter: ModelAdapter) -> list[str]:
    """Block-relative paths of the attention norm, attention, MLP norm and MLP modules."""
    spec = adapter.spec
    return [spec.attn_norm, _parent(spec.attn_out), spec.mlp_norm, _parent(spec.mlp_out)]


def set_linear(module: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Give ``module`` a new (out, in) weight (and bias), updating its feature counts."""
    module.weight = nn.Parameter(weight.detach().contiguous())
    if bias is not None:
        module.bias = nn.Parameter(bias.detach().contiguous())
    module.out_features, module.in_features = weight.shape


def untie_head(adapter: ModelAdapter) -> None:
    """Give the LM head its own weight: embedding and head are rotated differently."""
    head, embedding = adapter.lm_head, adapter.embeddings[0]
    if head.weight.data_ptr() == embedding.weight.data_ptr():
        set_linear(head, head.weight.detach().clone())
    adapter.config.tie_word_embeddings = False


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(get_submodule(root, parent) if parent else root, attr, module)


def _fuse_norm(adapter: ModelAdapter, root: nn.Module, norm_path: str, readers: list[nn.Linear]) -> None:
    """Scale the columns of ``readers`` by the norm's weight; swap the norm for an unscaled one."""
    norm = get_submodule(root, norm_path)
    weight = norm.weight.detach().double() + adapter.spec.norm_weight_offset
    for linear in readers:
        set_linear(linear, (linear.weight.double() * weight).to(linear.weight.dtype), None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
    _replace(root, norm_path, UnscaledRMSNorm(adapter.hidden_size, float(eps)))


def fuse_norms(adapter: ModelAdapter) -> None:
    """Move every RMSNorm weight into the Linear layers reading it (exact; unties the head)."""
    spec = adapter.spec
    untie_head(adapter)
    for block in adapter.blocks:
        _fuse_norm(adapter, block, spec.attn_norm, [get_submodule(block, p) for p in spec.attn_in])
        _fuse_norm(adapter, block, spec.mlp_norm, [get_submodule(block, p) for p in spec.mlp_in])
    _fuse_norm(adapter, adapter.model, spec.final_norm, [adapter.lm_head])


def rotate_embeddings(adapter: ModelAdapter, basis: torch.Tensor) -> None:
    """Embed tokens directly in the basis: ``E Q``, (vocab, k); Gemma's embedding scale is folded in."""
    embedding = adapter.embeddings[0]
    scale = float(getattr(embedding, "embed_scale", 1.0))
    weight = rotate_input(embedding.weight.detach() * scale, basis)
    _replace(adapter.model, adapter.spec.embeddings[0], ResizedEmbedding.from_weight(weight, embedding.padding_idx))


def rotate_head(adapter: ModelAdapter, basis: torch.Tensor) -> None:
    """Make the LM head read the final residual stream given in the basis."""
    head = adapter.lm_head
    set_linear(head, rotate_input(head.weight.detach(), basis))


def _read_in(block: nn.Module, paths: tuple[str, ...], basis: torch.Tensor) -> None:
    for path in paths:
        linear = get_submodule(block, path)
        set_linear(linear, rotate_input(linear.weight.detach(), basis))


def _write_in(block: nn.Module, path: str, basis: torch.Tensor) -> None:
    linear = get_submodule(block, path)
    bias = rotate_output(linear.bias.detach(), basis) if linear.bias is not None else None
    set_linear(linear, rotate_output(linear.weight.detach(), basis), bias)


def wrap_block(adapter: ModelAdapter, index: int, basis_in: torch.Tensor) -> SlicedDecoderLayer:
    """Wrap block ``index`` so it reads its input in ``basis_in`` (d, k_in).

    The attention projections are rotated; the mid-block signal and the output stay in the
    original basis (shortcuts ``Q_in^T`` and the identity) until :func:`rotate_mid` and
    :func:`rotate_output_basis` choose their bases.
    """
    spec, block = adapter.spec, adapter.blocks[index]
    _read_in(block, spec.attn_in, basis_in)
    dtype = next(block.parameters()).dtype
    eye = torch.eye(basis_in.shape[0], dtype=dtype)
    wrapper = SlicedDecoderLayer(block, block_parts(adapter), basis_in.t().to(dtype), eye)
    adapter.blocks[index] = wrapper
    return wrapper


def _set_shortcut(block: SlicedDecoderLayer, name: str, value: torch.Tensor) -> None:
    dtype = getattr(block, name).dtype
    setattr(block, name, nn.Parameter(value.detach().to(dtype)))


def rotate_mid(adapter: ModelAdapter, block: SlicedDecoderLayer, basis: torch.Tensor) -> None:
    """Put the mid-block signal (attention output plus residual) in ``basis`` (d, k_mid)."""
    spec = adapter.spec
    _write_in(block, spec.attn_out, basis)
    _read_in(block, spec.mlp_in, basis)
    _set_shortcut(block, "attn_shortcut", block.attn_shortcut.double() @ basis)
    _set_shortcut(block, "mlp_shortcut", basis.t())


def rotate_output_basis(adapter: ModelAdapter, block: SlicedDecoderLayer, basis: torch.Tensor) -> None:
    """Put the block output (MLP output plus residual) in ``basis`` (d, k_out)."""
    _write_in(block, adapter.spec.mlp_out, basis)
    _set_shortcut(block, "mlp_shortcut", block.mlp_shortcut.double() @ basis)


def sliced_block_params(adapter: ModelAdapter, index: int, d_in: int, d_mid: int, d_out: int) -> int:
    """Parameters block ``index`` will have once sliced to these widths, shortcuts included.

    Counted from the current (unsliced) projection shapes: layers reading the residual
    stream lose input columns, layers writing it lose output rows (and bias entries); the
    norms have no parameters left.
    """
    spec, block = adapter.spec, adapter.blocks[index]

    def count(path: str, width: int, reads: bool) -> int:
        linear = get_submodule(block, path)
        out, inp = linear.weight.shape
        bias = 0 if linear.bias is None else (out if reads else width)
        return (out * width if reads else width * inp) + bias

    total = sum(count(p, d_in, True) for p in spec.attn_in) + count(spec.attn_out, d_mid, False)
    total += sum(count(p, d_mid, True) for p in spec.mlp_in) + count(spec.mlp_out, d_out, False)
    return total + d_in * d_mid + d_mid * d_out
