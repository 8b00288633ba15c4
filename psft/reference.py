"""Reference log-probs without a second model in memory.

The training data are fixed, so the reference (initial) model's per-token log-probs on them can be computed
once, before the first update, and looked up later by the content of each row: a row's log-probs depend only
on its tokens, so the table is keyed by content and any shuffling, batching or padding of the data finds them.
Only the loss tokens' log-probs are stored (what `sft_kl`/`asft` read): 4 bytes per loss token, far below a second
copy of the model. Each process scores a shard of the data; the shards are then merged on every process. The table
lives in the output directory; every checkpoint records its `fingerprint()` (`psft.run_state`), so a resume with a
table another run wrote there is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

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
