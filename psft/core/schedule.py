"""`RolloutSchedule`: PSFT's batch schedule (`../shared/PSFT.md` §2) as a pure function of the optimizer step.

A rollout takes K mini-batches of data; its old log-probs are computed once at its start (a *refresh*) and each
mini-batch takes one optimizer step, `rollout_epochs` E times over. Rollouts start from the epoch's start (and,
after an SFT warm-up, from the warm-up's end), every K * E steps, and are cut short by the end of the epoch, of the
warm-up and of training. Given only those numbers, the schedule says for any step where it lies: which rollout,
which mini-batch, which pass, whether the step refreshes the old policy, and how many mini-batches of data the
trainer must fetch there. It holds no state, so a resumed run places its refreshes where the uninterrupted run did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    """Where one optimizer step lies in its rollout."""

    rollout_start: int  # the step that refreshed the old policy for this rollout
    length: int  # mini-batches of data in the rollout (K, less where it is cut short)
    mini_batch: int  # 0-based index of this step's mini-batch in the rollout
    epoch: int  # 0-based pass over the rollout (`rollout_epochs` passes)
    warmup: bool  # a plain SFT step (before `sft_warmup_steps`)

    @property
    def refresh(self) -> bool:
        """Whether the old policy is (re)computed at this step: the rollout's first step."""
        return self.mini_batch == 0 and self.epoch == 0


@dataclass(frozen=True)
class RolloutSchedule:
    """PSFT's rollout schedule over optimizer steps (see the module docstring).

    `updates_per_epoch`: optimizer steps per epoch of data, counting every pass (0 when unknown: one endless
    epoch). `max_steps`: the last step + 1 (0: no limit)."""

    mini_batches_per_rollout: int
    rollout_epochs: int = 1
    sft_warmup_steps: int = 0
    updates_per_epoch: int = 0
    max_steps: int = 0

    def __post_init__(self) -> None:
        if self.mini_batches_per_rollout < 1 or self.rollout_epochs < 1:
            raise ValueError("mini_batches_per_rollout and rollout_epochs must be >= 1")
        if self.sft_warmup_steps < 0 or self.updates_per_epoch < 0 or self.max_steps < 0:
            raise ValueError("sft_warmup_steps, updates_per_epoch and max_steps must be >= 0")

    def in_warmup(self, step: int) -> bool:
        return step < self.sft_warmup_steps

    def position(self, step: int) -> Position:
        """Where optimizer step `step` (0-based, the Trainer's `global_step` before it) lies."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        per_epoch = self.updates_per_epoch
        epoch_start = step - step % per_epoch if per_epoch else 0
        warmup = self.in_warmup(step)
        origin = epoch_start if warmup else max(epoch_start, self.sft_warmup_steps)
        span = self.mini_batches_per_rollout * self.rollout_epochs
        start = origin + (step - origin) // span * span
        ends = [start + span]
        if per_epoch:
            ends.append(epoch_start + per_epoch)
        if warmup:
            ends.append(self.sft_warmup_steps)
        if self.max_steps:
            ends.append(max(self.max_steps, step + 1))
        length = math.ceil((min(ends) - start) / self.rollout_epochs)
        offset = step - start
        return Position(start, length, offset % length, offset // length, warmup)

    def to_fetch(self, step: int) -> int:
        """Mini-batches of data the trainer fetches when it starts (or, after a resume, re-enters) the rollout at
        `step`: the rest of it (a resume inside a rollout re-enters it in its first pass; with E > 1 resuming is
        refused)."""
        position = self.position(step)
        return position.length - position.mini_batch
