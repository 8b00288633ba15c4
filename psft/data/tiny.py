"""Tiny models and tokenizers built locally: no hub, no download.

A character-level tokenizer with a ChatML-style chat template (with `{% generation %}` markers, so TRL's
assistant-only loss works) and a small Llama. Tests use them, and the built-in base model is one of them,
pretrained (see `scripts/pretrain_tiny.py`); `psft.data.models` resolves its name.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

PAD, EOS, BOS_TURN, EOT = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [PAD, EOS, BOS_TURN, EOT]

# ChatML. The assistant turn, its end-of-turn token included, is inside `{% generation %}` so that
# `return_assistant_tokens_mask` marks it and the model learns to stop.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_char_tokenizer(chars: str = string.printable) -> PreTrainedTokenizerFast:
    """A character-level fast tokenizer: one token per character, plus the ChatML special tokens."""
    symbols = SPECIAL_TOKENS + sorted(set(chars))
    backend = Tokenizer(models.WordLevel({s: i for i, s in enumerate(symbols)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOT, bos_token=None, unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_llama(
    tokenizer: PreTrainedTokenizerFast,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 512,
    seed: int = 0,
    tie_word_embeddings: bool = False,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for the tokenizer, deterministic in `seed`; `tie_word_embeddings` shares
    the output head with the input embedding, as most small instruct models (SmolLM2, Qwen2.5-0.5B, Gemma) do."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


# the names of built-in models resolve in `psft.data.models` (the one model loader); kept here for old imports
from psft.data.models import BUILTIN_MODEL_NAME, builtin_model_path, resolve_model_name  # noqa: E402, F401
