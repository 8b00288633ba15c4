"""General tasks: what the built-in base model is pretrained to do, and the out-of-domain set of the demo.

Four skills (reverse, uppercase, add, count letters) and two format-following tasks that wrap any of them
with an instruction about the output's shape (JSON, brackets), the toy counterpart of IFEval.
"""

from __future__ import annotations

import json
import random
import string

from psft.tasks.base import Example, Sampler


def _word(rng: random.Random, low: int = 3, high: int = 8) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(low, high)))


def _reverse(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return f"Reverse {word}.", word[::-1]


def _upper(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    return f"Uppercase {word}.", word.upper()


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a}+{b}?", str(a + b)


def _length(rng: random.Random) -> tuple[str, str]:
    word = _word(rng, 1, 10)
    return f"How many letters in {word}?", str(len(word))


SKILLS = {"reverse": _reverse, "upper": _upper, "add": _add, "length": _length}


def _plain(task: str) -> Sampler:
    def sample(rng: random.Random) -> Example:
        prompt, answer = SKILLS[task](rng)
        return Example(task, prompt, answer, answer, "exact")

    return sample


def sample_json(rng: random.Random) -> Example:
    """Any skill, answered as `{"answer": "..."}`: right only if the output parses and the value is right."""
    prompt, answer = SKILLS[rng.choice(sorted(SKILLS))](rng)
    completion = json.dumps({"answer": answer})
    return Example("json", f"{prompt} Reply in JSON.", completion, answer, "json_answer")


def sample_brackets(rng: random.Random) -> Example:
    """Any skill, answered inside square brackets: `[answer]` and nothing else."""
    prompt, answer = SKILLS[rng.choice(sorted(SKILLS))](rng)
    return Example("brackets", f"{prompt} Answer in brackets.", f"[{answer}]", answer, "bracketed")


GENERAL_SAMPLERS = {name: _plain(name) for name in SKILLS} | {
    "json": sample_json,
    "brackets": sample_brackets,
}
