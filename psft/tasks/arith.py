"""The in-domain task: the sum of three digits answered as a short reasoning trace ending in `\\boxed{N}`.

Related to what the base model knows (two-number addition, "What is 7+5?") but new in form: each step written
out, the result boxed as in the paper's math data. E.g. "Compute 3+4+2." -> "3+4=7. 7+2=9. \\boxed{9}".
Small enough to learn from a few hundred demonstrations: SFT on the built-in model reaches about 70% within
the default demo's budget (README), while the general tasks are forgotten along the way.
"""

from __future__ import annotations

import random

from psft.tasks.base import Example


def solve(*operands: int) -> tuple[list[str], int]:
    """The left-to-right steps of `a+b+c+...` and the value."""
    steps, total = [], operands[0]
    for x in operands[1:]:
        steps.append(f"{total}+{x}={total + x}")
        total += x
    return steps, total


def sample_arith(rng: random.Random) -> Example:
    """Three operands 1-9: 729 problems, every step a sum the base model can already do."""
    operands = [rng.randint(1, 9) for _ in range(3)]
    steps, value = solve(*operands)
    completion = ". ".join(steps) + f". \\boxed{{{value}}}"
    prompt = "Compute " + "+".join(map(str, operands)) + "."
    return Example("arith", prompt, completion, str(value), "math")
