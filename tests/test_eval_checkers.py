"""Answer checkers: math-verify (gold first), exact, regex, and the pluggable registry."""

from __future__ import annotations

import pytest

from psft.errors import UserError
from psft.eval import checkers
from psft.eval.checkers import Verdict, get_checker, list_checkers, register_checker


def test_math_checker_accepts_equivalent_answers_and_rejects_wrong_ones():
    check = get_checker("math")
    assert check("\\boxed{1/2}", "0.5")
    assert check("so the answer is \\boxed{0.5}", "\\frac{1}{2}")
    assert check("The answer is 42.", "42")
    for wrong in ("\\boxed{0.6}", "\\boxed{2}", "no idea", ""):
        assert not check(wrong, "0.5"), wrong
    verdict = check("We get \\boxed{42}", "42")
    assert verdict == Verdict(True, "42") and check.extract("We get \\boxed{42}") == "42"
    assert check("nothing here", "1").extracted is None


def test_math_checker_passes_the_gold_answer_first(monkeypatch):
    import math_verify

    calls = []
    monkeypatch.setattr(
        math_verify, "verify", lambda gold, answer, **kw: calls.append((gold, answer)) or True
    )
    get_checker("math")("\\boxed{7}", "3")
    [(gold, answer)] = calls
    assert str(gold[0]) == "3" and str(answer[0]) == "7"


def test_exact_and_regex_checkers():
    exact, regex = get_checker("exact"), get_checker("regex")
    assert exact(" olleh\n", "olleh") and not exact("olleh!", "olleh") and not exact("Olleh", "olleh")
    assert regex("abc 123", r"abc \d+") and not regex("abc 12x", r"abc \d+")
    assert not regex("xx abc 1", r"abc \d")  # the whole completion must match
    with pytest.raises(UserError, match="invalid reference pattern"):
        regex("a", "(")


def test_register_checker_function_and_class(monkeypatch):
    monkeypatch.setattr(checkers, "_REGISTRY", dict(checkers._REGISTRY))
    monkeypatch.setattr(checkers, "_CACHE", {})

    @register_checker("contains")
    def contains(completion: str, reference: str) -> bool:
        return reference in completion

    @register_checker("last_word")
    class LastWord:
        name = "last_word"

        def extract(self, completion: str) -> str | None:
            words = completion.split()
            return words[-1] if words else None

        def __call__(self, completion: str, reference: str) -> Verdict:
            answer = self.extract(completion)
            return Verdict(answer == reference, answer)

    assert {"contains", "last_word", "math", "exact", "regex"} <= set(list_checkers())
    assert get_checker("contains")("I say 42 today", "42") == Verdict(True, "I say 42 today")
    assert not get_checker("contains")("nope", "42")
    assert get_checker("last_word")("it is 9", "9") == Verdict(True, "9")
    assert get_checker("last_word") is get_checker("last_word")
    with pytest.raises(UserError, match="unknown checker 'nope'"):
        get_checker("nope")
