"""Exact resume and atomic checkpoints.

A checkpoint taken inside a rollout must let a resumed run finish that rollout against the *same* old policy
(the model at the rollout's start, which no longer exists). The remaining mini-batches' old log-probs are
saved with the checkpoint in the run state (`psft.core.run_state`, `psft_run_state_<process>.pt`), each micro-batch
keyed by a hash of its tokens; on resume the Trainer re-fetches the same micro-batches (`skip_first_batches`), and
the saved log-probs are re-attached after checking the hashes. Everything else (weights, optimizer, scheduler,
RNG, data position) is the Trainer's own checkpoint.

Checkpoints are written to `tmp-checkpoint-N/checkpoint-N`, flushed to disk, and renamed to `checkpoint-N`
only when complete: a crash during a save leaves the previous checkpoints as they were, and the half-written
one is invisible to `resume_from_checkpoint=True`.

Each checkpoint also records what fixes the meaning of the run (`psft_run.json`: objective and its
hyperparameters, K, rollout epochs, old policy, warm-up, batch shape, world size, seeds, a fingerprint of the
tokenised training data): a resume that changes any of them is refused, naming the field and both values.
Its last file, `psft_complete.json`, lists every file's size; before loading, a checkpoint is checked against
it (and every safetensors header against its file), so a truncated or half-copied checkpoint is named, with
the previous good one, instead of failing deep inside the loader.

`psft.lock` in the output directory (`acquire_lock`) keeps a second run from training into it at the same time;
a lock whose process is gone is stale and taken over.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import struct
from typing import Any

import torch
from transformers.utils import logging

from psft.errors import UserError

logger = logging.get_logger(__name__)

STAGING_PREFIX = "tmp-"
MANIFEST = "psft_complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def fingerprint(micro_batch: dict[str, Any]) -> str:
    """A hash of a micro-batch's tokens and labels: identifies it when it is re-fetched after a resume."""
    digest = hashlib.sha1()
    for key in ("input_ids", "labels"):
        if key in micro_batch:
            tensor = micro_batch[key].detach().cpu().contiguous()
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


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


# ------------------------------------------------------------------------------- completeness and recovery
def write_manifest(directory: str) -> None:
    """Record every file's size in the checkpoint: written last, it marks the checkpoint complete."""
    sizes = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if os.path.relpath(path, directory) != MANIFEST:
                sizes[os.path.relpath(path, directory)] = os.path.getsize(path)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"files": sizes}, f, indent=1, sort_keys=True)


def checkpoint_problem(checkpoint: str) -> str | None:
    """What makes `checkpoint` unusable (missing, incomplete, truncated, corrupt), or None if it looks whole."""
    if not os.path.isdir(checkpoint):
        return "no such checkpoint directory"
    manifest = os.path.join(checkpoint, MANIFEST)
    if not os.path.isfile(manifest):
        return f"incomplete: no {MANIFEST} (psft writes it last)"
    try:
        with open(manifest) as f:
            sizes = json.load(f)["files"]
    except (ValueError, KeyError, TypeError):
        return f"corrupt: {MANIFEST} is not readable"
    for name, size in sorted(sizes.items()):
        path = os.path.join(checkpoint, name)
        if not os.path.isfile(path):
            return f"corrupt: {name} is missing"
        if os.path.getsize(path) != size:
            return f"corrupt: {name} has {os.path.getsize(path)} bytes, {size} were written"
    return _safetensors_problems(checkpoint)


def _safetensors_problems(checkpoint: str) -> str | None:
    for path in sorted(glob.glob(os.path.join(checkpoint, "**", "*.safetensors"), recursive=True)):
        problem = safetensors_problem(path)
        if problem:
            return f"corrupt: {os.path.relpath(path, checkpoint)}: {problem}"
    return None


def safetensors_problem(path: str) -> str | None:
    """What is wrong with a safetensors file's header or size, without reading its tensors."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a header"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"the header says {length} bytes but the file has {size}"
        try:
            header = json.loads(f.read(length))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError):
            return "unreadable header"
    if 8 + length + end != size:
        return f"{size} bytes, the header describes {8 + length + end} (truncated or padded)"
    return None


def checkpoints(run_dir: str) -> list[str]:
    """The `checkpoint-N` folders of a run, latest (highest N) first."""
    if not os.path.isdir(run_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := CHECKPOINT_RE.match(name))]
    return [os.path.join(run_dir, name) for _, name in sorted(found, reverse=True)]


def last_complete_checkpoint(run_dir: str) -> str | None:
    """The latest checkpoint of `run_dir` that passes `checkpoint_problem`, or None."""
    return next((path for path in checkpoints(run_dir) if checkpoint_problem(path) is None), None)


def resolve_resume(run_dir: str, resume: str | bool) -> str:
    """The checkpoint to resume from, checked before anything loads it.

    `True` (the last checkpoint of `run_dir`): incomplete ones (no completeness marker: a crash during the
    save, or written by another tool) are skipped with a warning; a corrupt one (its files differ from what was
    written) is an error naming it and the previous good one. A path: it must be whole; if it is not, the error
    names the run's last good checkpoint."""
    if resume is True:
        found = checkpoints(run_dir)
        for path in found:
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            if problem.startswith("corrupt"):
                raise UserError(f"{path} is {problem}{_fallback(run_dir, path)}")
            logger.warning(f"skipping {path}: {problem}")
        if found:
            raise UserError(
                f"resume_from_checkpoint: no complete checkpoint in {run_dir}: {len(found)} without {MANIFEST} "
                f"(name one, e.g. {found[0]}, to resume from it after a check of its safetensors headers)"
            )
        raise UserError(
            f"resume_from_checkpoint: no complete checkpoint to resume in {run_dir} (no checkpoint-N folders); "
            "drop resume_from_checkpoint to start a new run"
        )
    path = str(resume)
    problem = checkpoint_problem(path)
    if problem is None:
        return path
    if problem.startswith("incomplete") and os.path.isfile(os.path.join(path, "trainer_state.json")):
        corrupt = _safetensors_problems(path)  # a checkpoint psft did not write: check what can be checked
        if corrupt is None:
            logger.warning(
                f"{path} has no {MANIFEST} (not written by psft): only its safetensors headers were checked"
            )
            return path
        problem = corrupt
    parent = os.path.dirname(os.path.abspath(path))
    raise UserError(f"resume_from_checkpoint: {path} is {problem}{_fallback(parent, path)}")


def _fallback(run_dir: str, bad: str) -> str:
    """`; the previous good checkpoint is X: resume from it ...`, or that there is none."""
    bad = os.path.abspath(bad)
    for path in checkpoints(run_dir):
        if os.path.abspath(path) != bad and checkpoint_problem(path) is None:
            return (
                f"; the previous good checkpoint is {path}: resume from it (resume_from_checkpoint={path}) "
                f"(or delete {bad})"
            )
    return "; there is no other complete checkpoint in " + run_dir


