"""The in-domain task: three-operand arithmetic answered as a short reasoning trace ending in `\\boxed{N}`.

Related to what the base model knows (two-number addition) but new in form: multiplication first, each step
written out, the result boxed as in the paper's math data. E.g. "Compute 3+4*2." -> "4*2=8. 3+8=11. \\boxed{11}".
"""

from __future__ import annotations

import random

from psft.tasks.base import Example

OPS = ("+", "*")


def solve(a: int, op1: str, b: int, op2: str, c: int) -> tuple[list[str], int]:
    """The steps of `a op1 b op2 c` with `*` before `+`, and the value."""
    if op2 == "*" and op1 == "+":
        steps = [f"{b}*{c}={b * c}", f"{a}+{b * c}={a + b * c}"]
        return steps, a + b * c
    first = a * b if op1 == "*" else a + b
    value = first * c if op2 == "*" else first + c
    return [f"{a}{op1}{b}={first}", f"{first}{op2}{c}={value}"], value


def sample_arith(rng: random.Random) -> Example:
    """Operands 1-9, at most one `*`, so every addition step stays within the base model's two-number range."""
    a, b, c = (rng.randint(1, 9) for _ in range(3))
    op1, op2 = rng.choice([("+", "+"), ("+", "*"), ("*", "+")])
    steps, value = solve(a, op1, b, op2, c)
    completion = ". ".join(steps) + f". \\boxed{{{value}}}"
    return Example("arith", f"Compute {a}{op1}{b}{op2}{c}.", completion, str(value), "math")
