"""Tiny models and a character-level tokenizer, built in code (no download).

Used by the tests and by the offline demo: a ``PreTrainedTokenizerFast`` with a ChatML chat
template (the Qwen2.5 convention: ``<|im_start|>``/``<|im_end|>``), and small transformers
causal LMs built from a config.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEFAULT_CHARS = string.ascii_letters + string.digits + string.punctuation + " \n"


def build_char_tokenizer(chars: str = DEFAULT_CHARS, words: list[str] | None = None):
    """A character-level fast tokenizer (optionally with whole-word tokens) and ChatML template.

    Ids: the special tokens first (``<|endoftext|>`` = 0 is eos/pad), then ``words`` (matched
    whole, before falling back to characters), then ``chars``; unknown characters map to
    ``<|endoftext|>``-free ``[UNK]``.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys(words or []))
    vocab: dict[str, int] = {}
    for tok in SPECIAL_TOKENS + ["[UNK]"] + words + sorted(set(chars)):
        vocab.setdefault(tok, len(vocab))
    alternatives = [_regex_escape(w) for w in sorted(words, key=len, reverse=True)] + [r"[\s\S]"]
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("|".join(alternatives)), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok


def _regex_escape(s: str) -> str:
    import re

    return re.escape(s)


def build_tiny_model(
    tokenizer,
    seed: int = 0,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    extra_vocab: int = 0,
    max_positions: int = 1024,
    arch: str = "llama",
):
    """A randomly initialised causal LM for ``tokenizer`` (logit width = vocab + ``extra_vocab``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    config = cls(
        vocab_size=len(tokenizer) + extra_vocab,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model.eval()


def save_pair_member(model, tokenizer, out_dir: str | Path) -> Path:
    """Save a model and its tokenizer as a local checkpoint directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
