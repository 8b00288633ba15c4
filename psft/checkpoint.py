"""Exact resume and atomic checkpoints.

A checkpoint taken inside a rollout must let a resumed run finish that rollout against the *same* old policy
(the model at the rollout's start, which no longer exists). The remaining mini-batches' old log-probs are
saved with the checkpoint (`psft_rollout_state_<process>.pt`), each micro-batch keyed by a hash of its tokens;
on resume the Trainer re-fetches the same micro-batches (`skip_first_batches`), and the saved log-probs are
re-attached after checking the hashes. Everything else (weights, optimizer, scheduler, RNG, data position)
is the Trainer's own checkpoint.

Checkpoints are written to `tmp-checkpoint-N/checkpoint-N`, flushed to disk, and renamed to `checkpoint-N`
only when complete: a crash during a save leaves the previous checkpoints as they were, and the half-written
one is invisible to `resume_from_checkpoint=True` (which picks the highest `checkpoint-N`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from typing import Any

import torch

from psft.errors import UserError

STAGING_PREFIX = "tmp-"
ROLLOUT_STATE = "psft_rollout_state_{}.pt"


def fingerprint(micro_batch: dict[str, Any]) -> str:
    """A hash of a micro-batch's tokens and labels: identifies it when it is re-fetched after a resume."""
    digest = hashlib.sha1()
    for key in ("input_ids", "labels"):
        if key in micro_batch:
            tensor = micro_batch[key].detach().cpu().contiguous()
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def rollout_state(
    pending: list[list[dict[str, Any]]], key: str, global_step: int, rollout_index: int
) -> dict[str, Any]:
    """What a checkpoint needs to finish the current rollout exactly: the pending micro-batches' hashes and
    their tensor `key` (the old log-probs), on CPU."""
    return {
        "global_step": global_step,
        "rollout_index": rollout_index,
        "pending": [
            [(fingerprint(mb), None if mb.get(key) is None else mb[key].detach().cpu()) for mb in mini_batch]
            for mini_batch in pending
        ],
    }


def save_rollout_state(directory: str, process_index: int, state: dict[str, Any]) -> None:
    os.makedirs(directory, exist_ok=True)
    torch.save(state, os.path.join(directory, ROLLOUT_STATE.format(process_index)))


def load_rollout_state(checkpoint: str, process_index: int) -> dict[str, Any] | None:
    """This process's saved rollout state, or None for a checkpoint written without one."""
    path = os.path.join(checkpoint, ROLLOUT_STATE.format(process_index))
    if not os.path.isfile(path):
        return None
    return torch.load(path, weights_only=True)


def restore_old_log_probs(
    mini_batches: list[list[dict[str, Any]]], state: dict[str, Any], source: str
) -> list[list[torch.Tensor | None]]:
    """The saved old log-probs for the re-fetched mini-batches of an interrupted rollout, in order; an error if
    the data differs from what the checkpoint saw (changed data, batch size, seed or shuffling)."""
    saved = state["pending"]
    if len(saved) < len(mini_batches):
        raise UserError(
            f"{source}: the checkpoint holds {len(saved)} pending mini-batches of its rollout but the resumed run "
            f"fetched {len(mini_batches)}; resume with the same mini_batches_per_rollout and batch sizes"
        )
    restored = []
    for i, mini_batch in enumerate(mini_batches):
        if len(saved[i]) != len(mini_batch):
            raise UserError(f"{source}: gradient_accumulation_steps differs from the checkpoint's run")
        row = []
        for micro_batch, (key, tensor) in zip(mini_batch, saved[i], strict=True):
            if fingerprint(micro_batch) != key:
                raise UserError(
                    f"{source}: the resumed run's data differs from the checkpoint's (same dataset, seed, "
                    "batch sizes and data order are needed to resume inside a rollout)"
                )
            row.append(tensor)
        restored.append(row)
    return restored


def remove_staging(run_dir: str) -> None:
    """Delete half-written checkpoints left by a crash during a save."""
    for path in glob.glob(os.path.join(run_dir, STAGING_PREFIX + "checkpoint-*")):
        shutil.rmtree(path, ignore_errors=True)


def publish(staged: str, final: str) -> None:
    """Flush a complete checkpoint to disk, then rename it into place (replacing an older one of that name)."""
    for root, _, files in os.walk(staged):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)
    if os.path.exists(final):
        replaced = staged + ".replaced"
        os.rename(final, replaced)
        os.rename(staged, final)
        shutil.rmtree(replaced)
    else:
        os.rename(staged, final)
    _fsync(os.path.dirname(final))
    shutil.rmtree(os.path.dirname(staged), ignore_errors=True)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
