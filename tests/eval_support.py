"""Shared by the tests/test_eval_*.py files: a tiny model trained to memorise a few answers (known outputs)."""

from __future__ import annotations

import torch

from psft.data.tiny import make_char_tokenizer, make_tiny_llama

# prompt -> the answer the memoriser gives (greedy)
ANSWERS = {"abc": "cba", "hello": "olleh", "xy": "yx", "1/2?": "\\boxed{0.5}"}


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def train_memorizer(steps: int = 120, seed: int = 0):
    """A tiny Llama that answers each chat prompt of ANSWERS with its answer and stops (end of turn)."""
    torch.manual_seed(seed)
    tok = make_char_tokenizer()
    model = make_tiny_llama(tok, hidden_size=64, intermediate_size=128, seed=seed)
    convs = [chat(p) + [{"role": "assistant", "content": a}] for p, a in ANSWERS.items()]
    enc = tok([tok.apply_chat_template(c, tokenize=False) for c in convs], padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok
