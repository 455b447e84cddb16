"""Tiny randomly initialized causal LMs built from real transformers configs.

Imported by the tests as ``from tiny_models import tiny_model`` (pytest puts ``tests/`` on
the path); ``conftest`` is not importable by name, since several folders have one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
import transformers as T
from safetensors.torch import load_file, save_file

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
    "qwen3": lambda: T.Qwen3Config(  # per-head q/k norms
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
    ),
    "gemma": lambda: T.GemmaConfig(  # RMSNorm scaled by 1 + w, scaled embeddings
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
    ),
    "gemma2": lambda: T.Gemma2Config(  # sandwich norms, logit soft-capping, sliding window
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, vocab_size=128, max_position_embeddings=128,
        sliding_window=16, query_pre_attn_scalar=16,
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

# Mixtures of experts: 4 routed experts, 2 per token (dense-only tests leave them out).
TINY_MOE_CONFIGS = {
    "mixtral": lambda: T.MixtralConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, vocab_size=128,
        max_position_embeddings=128,
    ),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(  # a shared expert beside the routed ones
        hidden_size=64, intermediate_size=96, moe_intermediate_size=64, shared_expert_intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
        num_experts_per_tok=2, vocab_size=128, max_position_embeddings=128,
    ),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(
        hidden_size=64, intermediate_size=96, moe_intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
        vocab_size=128, max_position_embeddings=128,
    ),
}


def tiny_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random causal LM of ``family`` in eval mode, with non-trivial weights."""
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config({**TINY_CONFIGS, **TINY_MOE_CONFIGS}[family]())
    with torch.no_grad():  # random norms and biases, so that folding them is actually tested
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def eval_text_beside(text: Path) -> Path:
    """A held-out text file next to ``text`` (``eval.txt``) that shares no 13-word run with it:
    netslim refuses calibration windows drawn from the text it evaluates on."""
    held_out = Path(text).with_name("eval.txt")
    if not held_out.exists():
        held_out.write_text(" ".join(f"a sleepy cat {i} naps under the old red tree." for i in range(400)))
    return held_out


def char_tokenizer():
    """A character-level fast tokenizer whose ids fit the tiny models' vocabulary of 128."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(c): c for c in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE fast tokenizer trained in memory on a few sentences (the kind GGUF stores as ``gpt2``).

    Its 256 byte tokens cover any text, so llama.cpp, which needs a real vocabulary, loads
    exports of models that use it.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    text = ["The quick brown fox jumps over the lazy dog.", "Small models run fast on a CPU.",
            "Pruning removes weights; quantization stores them in fewer bits."] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=vocab_size, min_frequency=1, special_tokens=["<s>", "</s>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>")


def tiny_llama_with_bpe(seed: int = 0):
    """``(model, tokenizer)``: a tiny random llama whose vocabulary is :func:`bpe_tokenizer`'s."""
    tokenizer = bpe_tokenizer()
    config = TINY_CONFIGS["llama"]()
    config.vocab_size = len(tokenizer)
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval(), tokenizer


def random_windows(count: int = 8, seqlen: int = 32, seed: int = 0):
    """``count`` windows of random tokens (ids 3..127) as calibration data."""
    from netslim.data.windows import TokenWindows  # noqa: PLC0415

    ids = torch.randint(3, 128, (count, seqlen), generator=torch.Generator().manual_seed(seed))
    return TokenWindows(ids, "random tokens", seqlen, 0, False)


_LOGITS_IN_A_NEW_PROCESS = """
import sys
import torch
import transformers
from safetensors.torch import load_file, save_file
import netslim
from netslim.export.load import read_marker
ids, plain = load_file(sys.argv[1])["ids"], sys.argv[3] == "plain"
out = {}
for folder in sys.argv[4:]:
    with torch.no_grad():
        out[folder] = netslim.load(folder).model(ids).logits.contiguous()
        if plain and read_marker(folder)["format"] == "dense":
            out[folder + ":plain"] = transformers.AutoModelForCausalLM.from_pretrained(folder)(ids).logits.contiguous()
save_file(out, sys.argv[2])
"""


def logits_in_a_new_process(folders: list, ids: torch.Tensor, work: Path, plain: bool = False) -> dict:
    """Folder -> the logits on ``ids`` of ``netslim.load(folder)`` in a fresh interpreter, as a
    user would reload it; with ``plain``, also ``folder:plain`` -> plain transformers' logits of
    each dense folder."""
    save_file({"ids": ids}, work / "ids.safetensors")
    run = subprocess.run([sys.executable, "-c", _LOGITS_IN_A_NEW_PROCESS, str(work / "ids.safetensors"),
                          str(work / "logits.safetensors"), "plain" if plain else "netslim", *map(str, folders)],
                         capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    return load_file(work / "logits.safetensors")
