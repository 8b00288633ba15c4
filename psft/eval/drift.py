"""Drift: how far a fine-tuned model moved from its base on held-out text, one model in memory at a time.

Step 1, `compute_reference_stats(base, tokenizer, texts, path)`: run the base once and store, for every
next-token position of the tokenised texts, the token ids, the base's log-prob of the actual next token,
its `top_k` largest log-probs (ids and values) and the log of the remaining "tail" mass, to a safetensors
file. Step 2, `measure_drift(model, path)`: run the fine-tuned model on the same token ids and compare.

Reported per position, averaged over all positions:

- ``kl``: KL(base || model). The top-k terms are exact; the tail is one bucket,
  ``T_b * (log T_b - log T_m)`` with ``T_b``, ``T_m`` the base's and the model's probability mass outside the
  base's top-k ids. Merging outcomes never increases KL (log-sum inequality), so with ``top_k < vocab``
  this is a **lower bound** on the true KL, tight when the top-k hold nearly all the base's mass or the two
  models agree on how the tail is shared. With ``top_k >= vocab`` it is exact.
- ``logprob_change``: model log-prob minus base log-prob of the actual next token (negative: the model
  finds the held-out text less likely than the base did).

Memory: logits are never materialised for a whole sequence; the final hidden states of the positions that have a
next token go through the output head `chunk_size` positions at a time (`psft.core.logprobs.next_token_log_softmax`, the
one full-distribution path, shared with `psft.eval.entropy`; by default as many positions as keep chunk_size x vocab
within `psft.core.logprobs.LOGITS_CHUNK_ELEMENTS`), so peak extra memory is a few chunk_size x vocab float32 tensors
(measured on CPU before padding positions were skipped, 8 x 1024 tokens, vocab 32k: 0.41 GB peak RSS growth for
stats + drift, against 2.0 GB for one plain full-logits log-softmax). The stats file takes about N x top_k x 8 bytes for N positions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from psft.core.logprobs import (  # noqa: F401  (head_log_softmax, last_hidden_state, LOGITS_CHUNK_ELEMENTS: old imports)
    LOGITS_CHUNK_ELEMENTS,
    head_log_softmax,
    last_hidden_state,
    next_token_log_softmax,
)
from psft.errors import UserError

FORMAT = "psft-drift-v1"


@dataclass
class DriftResult:
    """Mean per-position drift of a model from the base whose stats were stored."""

    kl: float
    logprob_change: float
    base_logprob: float
    model_logprob: float
    num_tokens: int
    top_k: int
    exact: bool

    def metrics(self, prefix: str = "drift") -> dict[str, float]:
        """Flat metrics for logging."""
        return {f"{prefix}/kl": self.kl, f"{prefix}/logprob_change": self.logprob_change}

    def summary(self) -> dict:
        return asdict(self)


def _batches(seqs: list[list[int]], batch_size: int, pad_id: int, device) -> Iterator[tuple]:
    """Right-padded batches `(ids, mask, positions, targets, index)`: the positions that have a next token (a
    bool `(batch, width)` mask), their next tokens and their indices in the flat position order (both in the
    row-major order `psft.core.logprobs.next_token_log_softmax` yields them in)."""
    offsets = [0]
    for s in seqs:
        offsets.append(offsets[-1] + len(s) - 1)
    for b in range(0, len(seqs), batch_size):
        batch = seqs[b : b + batch_size]
        width = max(len(s) for s in batch)
        ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in batch], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in batch], device=device)
        pos = torch.arange(width - 1, device=device)
        lengths = torch.tensor([len(s) for s in batch], device=device)
        valid = pos[None, :] < (lengths[:, None] - 1)
        flat = torch.tensor(offsets[b : b + len(batch)], device=device)[:, None] + pos[None, :]
        positions = torch.zeros_like(mask, dtype=torch.bool)
        positions[:, :-1] = valid
        yield ids, mask, positions, ids[:, 1:][valid], flat[valid].cpu()


def _tail_logmass_(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log of the probability mass outside `ids` (per row), computed stably by masking them out of `logp`.

    Overwrites `logp` (saves a chunk-sized copy): read everything else from it first.
    """
    return logp.scatter_(-1, ids, float("-inf")).logsumexp(-1)


@torch.no_grad()
def compute_reference_stats(
    model,
    tokenizer,
    texts: list[str],
    path: str | Path,
    *,
    top_k: int = 64,
    max_length: int = 512,
    batch_size: int = 8,
    chunk_size: int | None = None,
) -> Path:
    """Run the base `model` on `texts` once and save its per-position top-k statistics to `path`."""
    seqs = [
        s for s in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"] if len(s) >= 2
    ]
    if not seqs:
        raise UserError("drift: no text with at least two tokens")
    vocab = (
        model.get_output_embeddings().out_features
        if model.get_output_embeddings() is not None
        else len(tokenizer)
    )
    k = min(top_k, vocab)
    n = sum(len(s) - 1 for s in seqs)
    out = {
        "topk_ids": torch.empty(n, k, dtype=torch.int32),
        "topk_logprobs": torch.empty(n, k),
        "tail_logmass": torch.empty(n),
        "target_logprobs": torch.empty(n),
    }
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    try:
        for ids, mask, positions, targets, index in _batches(seqs, batch_size, pad, model.device):
            for s, logp in next_token_log_softmax(model, ids, mask, positions, chunk_size):
                idx, target = index[s : s + len(logp)], targets[s : s + len(logp)]
                out["target_logprobs"][idx] = logp.gather(-1, target[:, None])[:, 0].cpu()
                top = logp.topk(k, dim=-1)
                out["topk_ids"][idx] = top.indices.int().cpu()
                out["topk_logprobs"][idx] = top.values.cpu()
                out["tail_logmass"][idx] = _tail_logmass_(logp, top.indices).cpu()
    finally:
        model.train(was_training)
    out["input_ids"] = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    out["lengths"] = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path), metadata={"format": FORMAT, "top_k": str(k), "vocab_size": str(vocab)})
    return path


def load_reference_stats(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a stats file; UserError if it is missing or not one."""
    from safetensors import SafetensorError, safe_open

    if not Path(path).is_file():
        raise UserError(f"drift stats file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:  # a file that is not safetensors, or unreadable
        raise UserError(f"{path}: not a safetensors file: {err}") from err
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not a psft drift stats file (format {meta.get('format')!r})")
    return load_file(str(path)), meta


@torch.no_grad()
def measure_drift(
    model, path: str | Path, *, batch_size: int = 8, chunk_size: int | None = None
) -> DriftResult:
    """Compare `model` with the base statistics stored at `path` (see the module docstring)."""
    stats, meta = load_reference_stats(path)
    lengths = stats["lengths"].tolist()
    flat_ids = stats["input_ids"].tolist()
    seqs, start = [], 0
    for n in lengths:
        seqs.append(flat_ids[start : start + n])
        start += n
    vocab, k = int(meta["vocab_size"]), int(meta["top_k"])
    head = model.get_output_embeddings()
    if head is not None and head.out_features != vocab:
        raise UserError(f"{path}: stats are for a vocabulary of {vocab}, the model has {head.out_features}")
    kl = torch.zeros((), dtype=torch.float64)
    dlogp = torch.zeros((), dtype=torch.float64)
    mlogp = torch.zeros((), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for ids, mask, positions, targets, index in _batches(seqs, batch_size, 0, model.device):
            for s, logp in next_token_log_softmax(model, ids, mask, positions, chunk_size):
                idx, target = index[s : s + len(logp)], targets[s : s + len(logp)]
                top_ids = stats["topk_ids"][idx].long().to(logp.device)
                model_target = logp.gather(-1, target[:, None])[:, 0]
                model_top = logp.gather(-1, top_ids)
                model_tail = _tail_logmass_(logp, top_ids)
                base_top = stats["topk_logprobs"][idx].to(logp.device)
                base_tail = stats["tail_logmass"][idx].to(logp.device)
                head_kl = (base_top.exp() * (base_top - model_top)).sum(-1)
                tail_kl = torch.where(
                    base_tail > float("-inf"), base_tail.exp() * (base_tail - model_tail), 0.0
                )
                kl += (head_kl + tail_kl).double().sum().cpu()
                mlogp += model_target.double().sum().cpu()
                dlogp += (model_target.cpu() - stats["target_logprobs"][idx]).double().sum()
    finally:
        model.train(was_training)
    n = len(stats["target_logprobs"])
    return DriftResult(
        kl=float(kl / n),
        logprob_change=float(dlogp / n),
        base_logprob=float(stats["target_logprobs"].double().mean()),
        model_logprob=float(mlogp / n),
        num_tokens=n,
        top_k=k,
        exact=k >= vocab,
    )
