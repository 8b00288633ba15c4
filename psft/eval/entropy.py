"""Token entropy of a model on held-out demonstrations: how peaked its next-token distributions are.

For each (prompt, completion) pair the prompt goes through the chat template (with the generation prompt)
and the completion's tokens follow it, then the end-of-turn (EOS) token. At every completion position the
model's next-token distribution p gives H = -sum_v p(v) log p(v) (nats); the result is the mean over all
completion positions of all pairs. p is the model's own (with its head's logit scaling and softcapping), and
only the completion positions go through the output head, a chunk of positions at a time. The tokens are the demonstration's, not the model's own samples, so every
model is measured on the same positions. SFT drives this towards zero on the data it memorises; the PSFT
paper reports that PSFT keeps it from collapsing.
"""

from __future__ import annotations

from typing import Any

import torch

from psft.eval import drift
from psft.eval.drift import head_log_softmax, last_hidden_state
from psft.eval.generate import encode_prompt


@torch.no_grad()
def mean_token_entropy(
    model, tokenizer, pairs: list[tuple[str | list[dict[str, Any]], str]], batch_size: int = 16
) -> float | None:
    """Mean next-token entropy (nats) over the completion tokens of `(prompt, completion text)` pairs; None
    if there are no completion tokens."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    seqs = []
    for prompt, completion in pairs:
        prompt_ids = encode_prompt(tokenizer, prompt)
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
        seqs.append((prompt_ids + completion_ids, len(prompt_ids)))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    vocab = model.get_output_embeddings().out_features
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(seqs), batch_size):
            batch = seqs[start : start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in batch])
            attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
            # position i predicts token i + 1: the completion's tokens are predicted from prompt_len - 1 on
            scored = torch.zeros_like(attention, dtype=torch.bool)
            for row, (ids, prompt_len) in enumerate(batch):
                scored[row, prompt_len - 1 : len(ids) - 1] = True
            hidden = last_hidden_state(model, input_ids.to(model.device), attention.to(model.device))
            hidden = hidden[scored.to(hidden.device)]  # (scored positions, d): the head runs on these only
            rows = max(1, drift.LOGITS_CHUNK_ELEMENTS // vocab)  # the full logits are never built
            for i in range(0, hidden.shape[0], rows):
                logp = head_log_softmax(model, hidden[i : i + rows])
                total += -(logp.exp() * logp).sum().item()
            count += int(scored.sum())
    finally:
        model.train(was_training)
    return total / count if count else None
