"""`RunState`: the one owner of a run's mutable state, saved inside every checkpoint and restored on resume.

A resumed run must continue the run it resumes, not start a similar one: every value that the schedule, a stop
condition or a metric reads and that the model, optimizer and data position do not already fix lives here.

- the rollout position: rollouts started so far, and the old log-probs of the current rollout's mini-batches
  not trained yet (the old policy, the model at the rollout's start, no longer exists after a resume);
- the non-finite step counters that `max_nonfinite_steps` reads;
- the reference table's fingerprint (and the model, data and tokenizer it came from), so that a resume with
  another run's `reference_log_probs.pt` is refused;
- the drift base statistics (the run's starting model on the drift texts), so that drift is always measured
  against the start of the run, never against the resumed model;
- the state of callbacks attached to the run, by name (`callbacks`): the evaluations made so far and the time
  spent (`psft.eval.callback.EvalCallback`, `psft compare`'s progress), so that a resumed run reports the whole
  run, not its last piece. Plain Python values only (dicts, lists, strings, numbers).

Each process saves its own `psft_run_state_<process>.pt` (the pending old log-probs are per-process shards).
The random number generators stay the Trainer's (`rng_state_<process>.pth` in the same checkpoint, restored by
the Trainer): duplicating them here would restore them twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from psft.core.checkpoint import fingerprint
from psft.errors import Interrupted

RUN_STATE = "psft_run_state_{}.pt"
OLD_ROLLOUT_STATE = "psft_rollout_state_{}.pt"  # psft before the run state: the rollout position only
VERSION = 1


class Preempted(Interrupted):
    """SIGTERM stopped the run at a step boundary after writing a checkpoint; the message says how to resume."""


@dataclass
class RunState:
    """A run's mutable state (see the module docstring)."""

    rollout_index: int = 0  # rollouts started so far (old-policy refreshes)
    # the optimizer steps (lists of micro-batches, with their old log-probs) of the current rollout not trained yet
    pending: list[list[dict[str, Any]]] = field(default_factory=list)
    nonfinite_in_a_row: int = 0
    nonfinite_skipped: int = 0
    reference: dict[str, str] | None = None  # `ReferenceTable.describe()` of the precomputed table
    drift_base: bytes | None = None  # the drift base statistics file (safetensors), as written at the start
    callbacks: dict[str, Any] = field(default_factory=dict)  # callback name -> its state (plain values)
    # restored from a checkpoint: the saved pending rollout, until the trainer re-fetches its mini-batches
    resumed_rollout: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------- save / load
    def state_dict(self, global_step: int) -> dict[str, Any]:
        """Everything to save, on CPU; `pending` as (micro-batch fingerprint, old log-probs) pairs."""
        pending = []
        for mini_batch in self.pending:
            row = []
            for mb in mini_batch:
                old = mb.get("old_log_probs")
                row.append((fingerprint(mb), None if old is None else old.detach().cpu()))
            pending.append(row)
        return {
            "version": VERSION,
            "global_step": global_step,
            "rollout_index": self.rollout_index,
            "pending": pending,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_skipped": self.nonfinite_skipped,
            "reference": self.reference,
            "drift_base": None
            if self.drift_base is None
            else torch.frombuffer(bytearray(self.drift_base), dtype=torch.uint8),
            "callbacks": self.callbacks,
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "") -> None:
        """Restore from `state_dict()`; the pending rollout is re-attached when the trainer re-fetches it."""
        self.pending = []
        # the interrupted rollout is counted again when its remaining mini-batches are re-fetched
        self.rollout_index = state["rollout_index"] - (1 if state["pending"] else 0)
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        self.nonfinite_skipped = state.get("nonfinite_skipped", 0)
        self.reference = state.get("reference")
        base = state.get("drift_base")
        self.drift_base = None if base is None else base.numpy().tobytes()
        self.callbacks = dict(state.get("callbacks") or {})
        self.resumed_rollout = {
            "global_step": state["global_step"],
            "pending": state["pending"],
            "source": source,
        }

    def save(self, checkpoint: str, process_index: int, global_step: int) -> None:
        os.makedirs(checkpoint, exist_ok=True)
        torch.save(self.state_dict(global_step), os.path.join(checkpoint, RUN_STATE.format(process_index)))

    def load(self, checkpoint: str, process_index: int) -> bool:
        """Restore this process's state from `checkpoint`; False if it has none (written by another tool).
        A checkpoint of psft before the run state holds the rollout position only: the rest starts afresh."""
        path = os.path.join(checkpoint, RUN_STATE.format(process_index))
        old = os.path.join(checkpoint, OLD_ROLLOUT_STATE.format(process_index))
        if not os.path.isfile(path):
            path = old
        if not os.path.isfile(path):
            return False
        self.load_state_dict(torch.load(path, weights_only=True), source=checkpoint)
        return True

    def take_resumed_rollout(self, global_step: int) -> dict[str, Any] | None:
        """The saved pending rollout if the trainer is re-fetching it now (at the checkpoint's step), once."""
        state, self.resumed_rollout = self.resumed_rollout, None
        if state is None or not state["pending"] or state["global_step"] != global_step:
            return None
        return state

    # ---------------------------------------------------------------------------------------------- counters
    def count_step(self, finite: bool) -> None:
        """Count one optimizer step for the non-finite stop condition."""
        if finite:
            self.nonfinite_in_a_row = 0
        else:
            self.nonfinite_in_a_row += 1
            self.nonfinite_skipped += 1


def saved_callback_state(checkpoint: str, name: str, process_index: int = 0) -> Any:
    """A callback's entry in the run state that `checkpoint` holds (None if it has none), read without a
    trainer: what a tool checks before it resumes (`psft compare`: which run a checkpoint belongs to)."""
    state = RunState()
    if not state.load(checkpoint, process_index):
        return None
    return state.callbacks.get(name)
