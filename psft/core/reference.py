"""Reference log-probs without a second model in memory.

The training data are fixed, so the reference (initial) model's per-token log-probs on them can be computed
once, before the first update, and looked up later by the content of each row: a row's log-probs depend only
on its tokens, so the table is keyed by content and any shuffling, batching or padding of the data finds them.
Only the loss tokens' log-probs are stored (what `sft_kl`/`asft` read): 4 bytes per loss token, far below a second
copy of the model. Each process scores a shard of the data; the shards are then merged on every process. The table
lives in the output directory; every checkpoint records its `fingerprint()` (`psft.core.run_state`), so a resume with a
table another run wrote there is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import Tensor

from psft.core.logprobs import label_log_probs
from psft.errors import UserError


def _targets(batch: dict[str, Tensor]) -> Tensor:
    """The next-token targets of a micro-batch, `(batch, seq - 1)` (`(batch, seq)` when pre-shifted)."""
    return batch["shift_labels"] if "shift_labels" in batch else batch["labels"][:, 1:]


def _rows(batch: dict[str, Tensor]) -> Iterator[tuple[int, Tensor, bytes]]:
    """(row, its loss-token mask over the targets, content key) for every row of a padded micro-batch. The key
    hashes the row's real tokens and which of them are loss targets, counted among the real tokens only, so the same
    row padded on the left, on the right or not at all has one key; the same text with another loss mask is another
    row."""
    if "position_ids" in batch and "attention_mask" not in batch:
        raise UserError(
            "reference log-probs cannot be precomputed for packed (padding-free) batches; "
            "set packing: false, or use a LoRA adapter (reference = adapter disabled) or reference: copy"
        )
    input_ids, targets = batch["input_ids"], _targets(batch)
    mask = batch.get("attention_mask")
    length = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        loss = targets[row] != -100
        # target j predicts token j + 1 (`labels[:, 1:]` and pre-shifted `shift_labels` alike)
        predicted = torch.zeros(length, dtype=torch.bool, device=loss.device)
        predicted[1:] = loss[: length - 1]
        real = torch.ones_like(predicted) if mask is None else mask[row].bool().to(loss.device)
        key = hashlib.sha1(input_ids[row][real.to(input_ids.device)].to("cpu", torch.int64).numpy().tobytes())
        # target index among the real tokens (the same bytes as before left padding was handled: old tables load)
        targets_at = predicted[real].nonzero().flatten() - 1
        key.update(targets_at.to("cpu", torch.int64).numpy().tobytes())
        yield row, loss, key.digest()


class ReferenceTable:
    """Per-token reference log-probs of the loss tokens of every training row, keyed by the row's content."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: dict[str, Tensor], log_probs: Tensor) -> None:
        """Store the loss tokens' log-probs of a micro-batch's rows; `log_probs` is laid out like its targets."""
        for row, loss, key in _rows(batch):
            self.rows[key] = log_probs[row][loss].detach().float().cpu()

    def update(self, other: dict[bytes, Tensor]) -> None:
        """Merge another table's rows (another process's shard)."""
        self.rows.update(other)

    def lookup(self, batch: dict[str, Tensor]) -> Tensor:
        """The stored log-probs laid out like the micro-batch's targets (zeros off the loss tokens)."""
        out = torch.zeros(_targets(batch).shape, device=batch["input_ids"].device)
        for row, loss, key in _rows(batch):
            if key not in self.rows:
                raise UserError(
                    "a training row has no precomputed reference log-probs: the training data changed since "
                    "they were computed (a resumed run must train on the same data)"
                )
            out[row, loss.to(out.device)] = self.rows[key].to(out.device)
        return out

    def fingerprint(self) -> str:
        """A hash of the table's contents (rows and values, in key order): what a checkpoint records."""
        digest = hashlib.sha1(str(len(self.rows)).encode())
        for key in sorted(self.rows):
            digest.update(key)
            digest.update(self.rows[key].numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash mid-save leaves the previous file (or none), never a torn one."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        torch.save(self.rows, partial)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceTable:
        table = cls()
        table.rows = torch.load(path, weights_only=True)
        return table


# ------------------------------------------------------------------ live reference (whole distribution)
def next_token_logits(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[Tensor, Any]:
    """`model`'s plain forward (not TRL's fused head) on `inputs` without their labels: `(logits, output)` with the
    logits `(batch, seq - 1, vocab)` of each next-token target (`(batch, seq, vocab)` for `shift_labels`), in the
    model's dtype. One path for the trained model and the reference where the whole distribution is needed
    (`asft`, `eaft`); it builds the full logits, as a plain `transformers` forward does."""
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    output = model(**kwargs, use_cache=False)
    logits = output.logits
    return (logits if "shift_labels" in inputs else logits[:, :-1]), output


def vocabulary_size(model: torch.nn.Module) -> int:
    """Rows of `model`'s next-token distribution (its text config's `vocab_size`, kept up to date by
    `resize_token_embeddings`)."""
    causal_lm = model.get_base_model() if is_peft_model(model) else model
    return causal_lm.config.get_text_config().vocab_size


class ReferenceSource:
    """The reference (initial) model, live: one source for its label log-probs and its whole next-token distribution.

    Either a frozen copy of the starting model (`model`), or the trained PEFT model itself with its adapter disabled
    for the call (`adapter=model`, as TRL's trainers do). The precomputed `ReferenceTable` stores only the loss
    tokens' log-probs, so it can serve `label_log_probs` consumers (`sft_kl`, `asft_label_kl`, a fixed old policy)
    but not the distribution `asft` needs. Both calls run in eval mode without gradient.
    """

    def __init__(self, model: torch.nn.Module, adapter: torch.nn.Module | None = None) -> None:
        self.model, self.adapter = model, adapter

    @contextmanager
    def _active(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.adapter.disable_adapter() if self.adapter is not None else contextlib.nullcontext():
                yield
        finally:
            self.model.train(was_training)

    def label_log_probs(self, inputs: dict[str, Any]) -> Tensor:
        """Float32 log-probs of the labels, exactly as `psft.core.logprobs.label_log_probs` computes the policy's."""
        with self._active():
            return label_log_probs(self.model, inputs)

    @torch.no_grad()
    def logits(self, inputs: dict[str, Any]) -> Tensor:
        """Next-token logits `(batch, seq - 1, vocab)` at every position (`next_token_logits`), model dtype."""
        with self._active():
            return next_token_logits(self.model, inputs)[0]


def check_reference_vocabulary(reference: torch.nn.Module, model: torch.nn.Module) -> None:
    """A reference whose vocabulary differs from the model's cannot give a KL over the same tokens: one line."""
    ours, theirs = vocabulary_size(model), vocabulary_size(reference)
    if ours != theirs:
        raise UserError(
            f"the reference model's vocabulary ({theirs} tokens) differs from the trained model's ({ours}): set "
            "reference to 'copy' (a frozen copy of the starting model) or 'adapter' (PEFT), not another model"
        )
