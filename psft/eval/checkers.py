"""Answer checkers: decide whether a model's completion answers a reference, by name.

Stable API (the task suite and user code import it)::

    from psft.eval.checkers import Verdict, get_checker, register_checker, list_checkers

    check = get_checker("math")               # "math", "exact", "regex", or one you registered
    verdict = check(completion_text, reference)  # -> Verdict; bool(verdict) is verdict.correct
    verdict.extracted                           # the answer found in the completion (str or None)
    check.extract(completion_text)              # the same extraction, without a reference

Built-in checkers:

- ``math``: math-verify (``verify(parse(gold), parse(answer))``, gold first). The answer is taken from
  ``\\boxed{...}`` when present, else the last LaTeX or plain expression; ``\\boxed{1/2}`` matches ``0.5``.
- ``exact``: the stripped completion equals the stripped reference (case-sensitive).
- ``regex``: the reference is a regular expression that the whole stripped completion must match
  (``re.fullmatch``, DOTALL).

Register a new one with a decorator, on a function ``(completion, reference) -> bool | Verdict`` or on a
class whose instances are checkers (have ``extract`` and ``__call__``)::

    @register_checker("contains")
    def contains(completion: str, reference: str) -> bool:
        return reference in completion
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from psft.errors import UserError


@dataclass(frozen=True)
class Verdict:
    """The outcome of checking one completion: correct or not, and the answer that was extracted."""

    correct: bool
    extracted: str | None

    def __bool__(self) -> bool:
        return self.correct


@runtime_checkable
class Checker(Protocol):
    """What `get_checker` returns."""

    name: str

    def extract(self, completion: str) -> str | None: ...

    def __call__(self, completion: str, reference: str) -> Verdict: ...


_REGISTRY: dict[str, Callable[[], Checker]] = {}


class FunctionChecker:
    """Adapts a plain function ``(completion, reference) -> bool | Verdict`` to the `Checker` protocol."""

    def __init__(self, name: str, fn: Callable[[str, str], bool | Verdict]):
        self.name, self.fn = name, fn

    def extract(self, completion: str) -> str | None:
        return completion.strip()

    def __call__(self, completion: str, reference: str) -> Verdict:
        out = self.fn(completion, reference)
        return out if isinstance(out, Verdict) else Verdict(bool(out), self.extract(completion))


def register_checker(name: str) -> Callable:
    """Decorator: register a checker class (instantiated with no arguments) or function under `name`."""

    def decorate(obj):
        _CACHE.pop(name, None)
        if isinstance(obj, type):
            _REGISTRY[name] = obj
        else:
            _REGISTRY[name] = lambda: FunctionChecker(name, obj)
        return obj

    return decorate


def _register_suite_checkers() -> None:
    """Register the built-in task suite's checkers ("json_answer", "bracketed", "mentions", "instruction") unless
    a checker of that name is registered: the suite hands them in as plain functions
    (`psft.tasks.checks.SUITE_CHECKERS`) and imports nothing from here, so there is no import circle."""
    from psft.tasks.checks import SUITE_CHECKERS

    for name, fn in SUITE_CHECKERS.items():
        if name not in _REGISTRY:
            register_checker(name)(fn)


def list_checkers() -> list[str]:
    """Names of the registered checkers (the built-in suite's included)."""
    _register_suite_checkers()
    return sorted(_REGISTRY)


_CACHE: dict[str, Checker] = {}


def get_checker(name: str) -> Checker:
    """The checker registered as `name` (one shared instance per name); UserError if unknown."""
    if name not in _REGISTRY:
        _register_suite_checkers()
    if name not in _REGISTRY:
        raise UserError(f"unknown checker {name!r}; registered: {', '.join(list_checkers())}")
    if name not in _CACHE:
        _CACHE[name] = _REGISTRY[name]()
    return _CACHE[name]


@register_checker("exact")
class ExactChecker:
    """Stripped completion == stripped reference."""

    name = "exact"

    def extract(self, completion: str) -> str | None:
        return completion.strip()

    def __call__(self, completion: str, reference: str) -> Verdict:
        answer = self.extract(completion)
        return Verdict(answer == reference.strip(), answer)


@register_checker("regex")
class RegexChecker:
    """The reference is a regex; the whole stripped completion must match it."""

    name = "regex"

    def extract(self, completion: str) -> str | None:
        return completion.strip()

    def __call__(self, completion: str, reference: str) -> Verdict:
        answer = self.extract(completion)
        try:
            ok = re.fullmatch(reference, answer, flags=re.DOTALL) is not None
        except re.error as err:
            raise UserError(f"regex checker: invalid reference pattern {reference!r}: {err}") from err
        return Verdict(ok, answer)


@register_checker("math")
class MathChecker:
    """math-verify equivalence, gold first: ``verify(parse(reference), parse(completion))``."""

    name = "math"

    @staticmethod
    def _timeout() -> int | None:
        # math-verify's timeout uses SIGALRM, which only works in the main thread.
        return 5 if threading.current_thread() is threading.main_thread() else None

    def _parse(self, text: str) -> list:
        from math_verify import parse

        return parse(text, parsing_timeout=self._timeout())

    def extract(self, completion: str) -> str | None:
        parsed = self._parse(completion)
        return str(parsed[-1]) if parsed else None

    def __call__(self, completion: str, reference: str) -> Verdict:
        from math_verify import verify

        answer = self._parse(completion)
        gold = self._parse(reference) or self._parse(f"${reference}$")
        ok = bool(gold and answer and verify(gold, answer, timeout_seconds=self._timeout()))
        return Verdict(ok, str(answer[-1]) if answer else None)


def infer_checker(records: list) -> str:
    """The checker for records that name none: "math" when every such reference is a number or holds a
    `\\boxed{}` answer (math-verify then compares values, not strings), else "exact"."""
    references = [r.reference.strip() for r in records if not r.checker]
    numeric = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?|[-+]?\d+/\d+")
    if references and all(numeric.fullmatch(ref) or "\\boxed" in ref for ref in references):
        return "math"
    return "exact"
