"""Verifiable rewards for RL (TRL's `GRPOTrainer`), built from the answer checkers of `psft.eval.checkers`.

Each dataset row carries its reference `answer` and, optionally, the name of its `checker` ("math" for
math-verify, "exact", "regex", the suite's "json_answer" and "bracketed", or one you registered); rows without
one use the default checker. TRL calls a reward function with the prompts, the completions and every other
dataset column as keyword lists, one entry per completion::

    reward = checker_reward("math")
    reward(prompts, completions, answer=["11"], checker=["math"])   # -> [1.0] or [0.0]
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from psft import tasks  # noqa: F401  (registers the suite's checkers: json_answer, bracketed)
from psft.eval.checkers import get_checker

RewardFunc = Callable[..., list[float | None]]

_BOXED = re.compile(r"\\boxed\{.+\}", re.DOTALL)


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """The text of a completion: a plain string, or the content of the messages of a conversational one."""
    if isinstance(completion, str):
        return completion
    return "".join(str(message.get("content") or "") for message in completion)


def _checker_names(checker: list[str | None] | None, default: str, count: int) -> list[str]:
    names = checker if checker is not None else [None] * count
    return [name or default for name in names]


def checker_reward(default_checker: str = "math") -> RewardFunc:
    """Reward 1.0 when the row's checker accepts the completion against its `answer`, else 0.0.

    An unknown checker name (default or in a row) raises `UserError` naming the registered ones."""
    get_checker(default_checker)

    def correctness(
        prompts: list, completions: list, answer: list[str], checker: list | None = None, **_: Any
    ):
        names = _checker_names(checker, default_checker, len(completions))
        return [
            float(get_checker(name)(completion_text(c), str(ref)).correct)
            for c, ref, name in zip(completions, answer, names, strict=True)
        ]

    correctness.__name__ = "correctness"  # TRL logs rewards/<function name>/mean
    return correctness


def has_answer_format(text: str, checker: str) -> bool | None:
    """Whether `text` gives its answer in the form the checker expects, regardless of its value.

    "math": a `\\boxed{...}`; "json_answer": a JSON object with the one key "answer"; "bracketed": `[...]`.
    Other checkers have no format of their own: None."""
    text = text.strip()
    if checker == "math":
        return _BOXED.search(text) is not None
    if checker == "json_answer":
        try:
            value = json.loads(text)
        except ValueError:
            return False
        return isinstance(value, dict) and list(value) == ["answer"]
    if checker == "bracketed":
        return len(text) >= 2 and text[0] == "[" and text[-1] == "]"
    return None


def format_reward(default_checker: str = "math") -> RewardFunc:
    """Reward 1.0 when the answer is in the checker's format (see `has_answer_format`), else 0.0; None (no
    signal: TRL skips it in the weighted sum) for rows whose checker has no format."""

    def answer_format(prompts: list, completions: list, checker: list | None = None, **_: Any):
        names = _checker_names(checker, default_checker, len(completions))
        out: list[float | None] = []
        for c, name in zip(completions, names, strict=True):
            ok = has_answer_format(completion_text(c), name)
            out.append(None if ok is None else float(ok))
        return out

    answer_format.__name__ = "answer_format"
    return answer_format
