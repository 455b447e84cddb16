"""Shared fixtures: tiny randomly initialized models built from real transformers configs."""

from __future__ import annotations

import pytest
import torch

from tiny_models import TINY_CONFIGS, char_tokenizer, tiny_model  # noqa: F401  (re-exported for fixtures)


@pytest.fixture(params=sorted(TINY_CONFIGS))
def family_model(request) -> torch.nn.Module:
    """Each tiny family in turn."""
    return tiny_model(request.param)


@pytest.fixture
def llama_model() -> torch.nn.Module:
    """A tiny Llama (GQA: 4 heads, 2 KV heads)."""
    return tiny_model("llama")


@pytest.fixture
def token_windows():
    """Eight random windows of 32 tokens as calibration data."""
    from netslim.data.windows import TokenWindows

    ids = torch.randint(3, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    return TokenWindows(ids, "random tokens", 32, 0, False)


@pytest.fixture
def tiny_folder(tmp_path):
    """A tiny Llama saved as a Hugging Face folder with a tokenizer, plus a text file."""
    model = tiny_model("llama")
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(" ".join(f"the quick brown fox {i} jumps over the lazy dog." for i in range(400)))
    return folder, text
