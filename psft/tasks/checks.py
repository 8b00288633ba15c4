"""Answer checkers of this suite's format-following tasks: right shape AND right answer.

Registered in `psft.eval.checkers` as "json_answer" and "bracketed" when `psft.tasks` is imported; the
records name them in their `checker` field. The other tasks use the built-in "exact" and "math".
"""

from __future__ import annotations

import json

from psft.eval.checkers import register_checker


@register_checker("json_answer")
def json_answer(completion: str, reference: str) -> bool:
    """The whole completion is a JSON object whose only key is "answer", with the reference as its value."""
    try:
        value = json.loads(completion.strip())
    except ValueError:
        return False
    return isinstance(value, dict) and list(value) == ["answer"] and str(value["answer"]) == reference.strip()


@register_checker("bracketed")
def bracketed(completion: str, reference: str) -> bool:
    """The whole completion is `[reference]`."""
    return completion.strip() == f"[{reference.strip()}]"
