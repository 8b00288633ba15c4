"""Answer checkers of this suite's format-following tasks: right shape AND right answer.

`SUITE_CHECKERS` hands them, with the instruction tasks' "mentions" and "instruction", to `psft.eval.checkers`,
which registers them on first use (this module imports nothing from it: no import circle); the records name them
in their `checker` field. The other tasks use the built-in "exact" and "math".
"""

from __future__ import annotations

import json

from psft.tasks.instruct import follows_instruction, mentions


def json_answer(completion: str, reference: str) -> bool:
    """The whole completion is a JSON object whose only key is "answer", with the reference as its value."""
    try:
        value = json.loads(completion.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and list(value) == ["answer"] and str(value["answer"]) == reference.strip()


def bracketed(completion: str, reference: str) -> bool:
    """The whole completion is `[reference]`."""
    return completion.strip() == f"[{reference.strip()}]"


SUITE_CHECKERS = {
    "json_answer": json_answer,
    "bracketed": bracketed,
    "mentions": mentions,
    "instruction": follows_instruction,
}
