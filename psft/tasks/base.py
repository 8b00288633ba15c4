"""The task record every generator yields, the held-out split rule and the seeded sampling loop."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from psft.errors import UserError

SPLITS = ("train", "test")
TEST_FRACTION_PERCENT = 10  # share of each task's problem space reserved for the test split
# tasks with a small problem space hold out more: arith's 729 problems split 220 test / 509 train, enough for
# the research preset's >= 200 in-domain prompts and the 500 training demonstrations
TEST_FRACTION_PERCENT_BY_TASK = {"arith": 30}
# what the built-in tasks generate: bumped whenever a split or a generator changes, so that a compare run
# finished on the old data is never reused (psft.experiments.store.run_settings)
TASKS_VERSION = 2  # 2: arith holds out 30% (was 20%: 155 test problems)


@dataclass(frozen=True)
class Example:
    """One problem: the user prompt, the reference completion, the answer its checker compares against."""

    task: str
    prompt: str
    completion: str
    answer: str
    checker: str


Sampler = Callable[[random.Random], Example]


def split_of(example: Example) -> str:
    """`"test"` or `"train"`, a fixed function of task and prompt, so the splits never overlap whatever the seed."""
    digest = hashlib.sha256(f"{example.task}\n{example.prompt}".encode()).digest()
    percent = TEST_FRACTION_PERCENT_BY_TASK.get(example.task, TEST_FRACTION_PERCENT)
    return "test" if int.from_bytes(digest[:4], "big") % 100 < percent else "train"


def sample_unique(sampler: Sampler, n: int, seed: int, split: str, name: str) -> list[Example]:
    """`n` distinct problems of one split, deterministic in `seed` (and the same for every Python run)."""
    if split not in SPLITS:
        raise UserError(f"split must be one of {SPLITS}, got {split!r}")
    rng = random.Random(f"{name}:{split}:{seed}")
    seen: set[str] = set()
    out: list[Example] = []
    misses = 0
    while len(out) < n:
        example = sampler(rng)
        if example.prompt in seen or split_of(example) != split:
            misses += 1
            if misses > 1000 + 50 * n:
                raise UserError(
                    f"task {name!r} has fewer than {n} distinct {split} problems (got {len(out)})"
                )
            continue
        seen.add(example.prompt)
        out.append(example)
    return out
