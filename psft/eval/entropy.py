"""Token entropy of a model on held-out demonstrations: how peaked its next-token distributions are.

For each (prompt, completion) pair the prompt goes through the chat template (with the generation prompt)
and the completion's tokens follow it, then the end-of-turn (EOS) token. At every completion position the
model's next-token distribution p gives H = -sum_v p(v) log p(v) (nats); the result is the mean over all
completion positions of all pairs. p is the model's own (with its head's logit scaling and softcapping), and
only the completion positions go through the output head, a chunk of positions at a time
(`psft.core.logprobs.next_token_log_softmax` and `token_entropy`, the path drift uses too). The tokens are the
demonstration's, not the model's own samples, so every model is measured on the same positions. SFT drives this towards zero on the data it memorises; the PSFT
paper reports that PSFT keeps it from collapsing.
"""

from __future__ import annotations

from typing import Any

import torch

from psft.core.logprobs import next_token_log_softmax, token_entropy
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
    was_training = model.training
    model.eval()
    entropies = []
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
            device = model.device
            for _, logp in next_token_log_softmax(model, input_ids.to(device), attention.to(device), scored):
                entropies.append(token_entropy(logp).double().cpu())
    finally:
        model.train(was_training)
    count = sum(len(e) for e in entropies)
    return float(torch.cat(entropies).sum()) / count if count else None
