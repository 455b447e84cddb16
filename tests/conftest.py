"""Shared fixtures: tiny randomly initialized models built from real transformers configs."""

from __future__ import annotations

import pytest
import torch
import transformers as T

TINY_CONFIGS = {
    "llama": lambda: T.LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128,
    ),
    "qwen2": lambda: T.Qwen2Config(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128,
    ),
    "mistral": lambda: T.MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=128, head_dim=16,
    ),
    "gemma3_text": lambda: T.Gemma3TextConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
        sliding_window=16,
    ),
    "gpt2": lambda: T.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=128,
        bos_token_id=1, eos_token_id=2,
    ),
    "opt": lambda: T.OPTConfig(
        hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
        max_position_embeddings=128, word_embed_proj_dim=64, bos_token_id=1, eos_token_id=2,
        pad_token_id=0,
    ),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in eval mode, with non-trivial weights."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(TINY_CONFIGS[family]())
    with torch.no_grad():  # random norms and biases, so that folding them is actually tested
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


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


def char_tokenizer():
    """A character-level fast tokenizer whose ids fit the tiny models' vocabulary of 128."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(c): c for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


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
