"""Reference log-probs without a second model in memory.

The training data are fixed, so the reference (initial) model's per-token log-probs on them can be computed
once, before the first update, and looked up later by the tokens of each row: a row's log-probs depend only
on its tokens, so the table is keyed by content and any shuffling, batching or padding of the data finds them.
Memory: one float per training token (4 bytes), far below a second copy of the model for real datasets.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from psft.errors import UserError


def _real_rows(batch: dict[str, Tensor]) -> Iterator[tuple[int, Tensor, bytes]]:
    """(row, positions of its real tokens, content key) for every row of a padded micro-batch."""
    input_ids = batch["input_ids"]
    mask = batch.get("attention_mask")
    for row in range(input_ids.shape[0]):
        positions = (
            torch.arange(input_ids.shape[1], device=input_ids.device)
            if mask is None
            else mask[row].nonzero().flatten()
        )
        tokens = input_ids[row, positions].to("cpu", torch.int64)
        yield row, positions, hashlib.sha1(tokens.numpy().tobytes()).digest()


def labels_for_every_token(batch: dict[str, Tensor]) -> Tensor:
    """Labels that score every real next token (not only the loss tokens), for a reference pass."""
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = -100
    return labels


class ReferenceTable:
    """Per-token reference log-probs of every training row, keyed by the row's tokens."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: dict[str, Tensor], log_probs: Tensor) -> None:
        """Store the rows of a micro-batch; `log_probs` (batch, seq-1) scores every real next token."""
        if "position_ids" in batch and "attention_mask" not in batch:
            raise UserError(
                "reference log-probs cannot be precomputed for packed (padding-free) batches; "
                "set packing: false, or use a LoRA adapter (reference = adapter disabled) or reference: copy"
            )
        for row, positions, key in _real_rows(batch):
            self.rows[key] = log_probs[row, positions[:-1]].detach().float().cpu()

    def lookup(self, batch: dict[str, Tensor]) -> Tensor:
        """The stored log-probs laid out like the micro-batch's shifted labels (zeros on padding)."""
        input_ids = batch["input_ids"]
        out = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 1, device=input_ids.device)
        for row, positions, key in _real_rows(batch):
            if key not in self.rows:
                raise UserError(
                    "a training row has no precomputed reference log-probs: the training data changed since "
                    "they were computed (a resumed run must train on the same data)"
                )
            out[row, positions[:-1]] = self.rows[key].to(out.device)
        return out

    def build(self, batches: Iterable[dict[str, Tensor]], log_probs_fn) -> None:
        """Fill the table from `batches` with `log_probs_fn(batch) -> (batch, seq-1)` log-probs."""
        for batch in batches:
            self.add(batch, log_probs_fn(batch))

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
