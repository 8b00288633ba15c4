"""The preference task: answer a known question in a requested wrapper, as chosen/rejected pairs for DPO.

A prompt is one of the base model's skills (`psft.tasks.general.SKILLS`) plus an instruction about the shape of
the answer that the base model was never taught: parentheses, quotes or braces (`Reverse abc. Answer in
braces.` -> `{cba}`). The *chosen* answer is right and in the requested shape; the *rejected* one is wrong in
the right shape, right in another shape (bare, or another wrapper: brackets included, which the base knows), or
both. The toy counterpart of UltraFeedback in the paper's human-values run: the companion SFT set
(`psft/pref-sft`) is the chosen answers of the same prompts, so the pipeline is SFT or PSFT on the chosen
answers, then DPO on the pairs, as the paper did. The checker is `exact` on the wrapped answer: a completion
counts only if it is right and in the requested shape.

    from psft.tasks.preference import preference_pairs
    pairs = preference_pairs(500, seed=0, split="train")   # [{"prompt", "chosen", "rejected", ...}, ...]
"""

from __future__ import annotations

import random
import string

from psft.tasks.base import Example, sample_unique
from psft.tasks.general import SKILLS

TASK = "pref"
SFT_NAME = "pref-sft"  # data name `psft/pref-sft`: the chosen answers, as SFT demonstrations
PAIRS_NAME = "pref"  # data name `psft/pref`: the preference pairs

# requested shape -> (how the prompt asks for it, (opening, closing))
WRAPPERS = {
    "parens": ("in parentheses", ("(", ")")),
    "quotes": ("in quotes", ('"', '"')),
    "braces": ("in braces", ("{", "}")),
}
SHAPES = (
    ("", ""),
    ("[", "]"),
    ("(", ")"),
    ('"', '"'),
    ("{", "}"),
)  # shapes a rejected answer may take instead
REJECTED_KINDS = ("wrong_answer", "wrong_format", "both")


def sample_pref(rng: random.Random) -> Example:
    """A skill question with a shape instruction; the completion is the right answer in that shape."""
    skill = rng.choice(sorted(SKILLS))
    question, answer = SKILLS[skill](rng)
    asked, wrapper = WRAPPERS[rng.choice(sorted(WRAPPERS))]
    wrapped = wrapper[0] + answer + wrapper[1]
    return Example(TASK, f"{question} Answer {asked}.", wrapped, wrapped, "exact")


def unwrap(example: Example) -> tuple[str, tuple[str, str]]:
    """(bare answer, its wrapper) of a `pref` example."""
    asked = example.prompt.rsplit(" Answer ", 1)[1].removesuffix(".")
    wrapper = next(w for a, w in WRAPPERS.values() if a == asked)
    return example.completion[1:-1], wrapper


def near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer close to the right one: a number off by 1 to 3, or one letter changed."""
    if answer.isdigit():
        value = int(answer)
        return str(value + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if value + d >= 0]))
    i = rng.randrange(len(answer))
    letters = string.ascii_uppercase if answer[i].isupper() else string.ascii_lowercase
    return answer[:i] + rng.choice([c for c in letters if c != answer[i]]) + answer[i + 1 :]


def rejected_answer(example: Example, seed: int = 0) -> tuple[str, str]:
    """(rejected completion, its kind) for a `pref` example: deterministic in the prompt and `seed`."""
    rng = random.Random(f"{PAIRS_NAME}:{seed}:{example.prompt}")
    answer, wrapper = unwrap(example)
    kind = rng.choice(REJECTED_KINDS)
    value = answer if kind == "wrong_format" else near_miss(answer, rng)
    shape = wrapper if kind == "wrong_answer" else rng.choice([s for s in SHAPES if s != wrapper])
    return shape[0] + value + shape[1], kind


def preference_pairs(n: int, seed: int = 0, split: str = "train") -> list[dict]:
    """`n` conversational preference records of `split` (TRL's prompt/chosen/rejected format), with the task's
    `answer`, `checker` and the rejected answer's `kind`. Their prompts are those of `psft/pref-sft`'s first `n`."""
    rows = []
    for example in sample_unique(sample_pref, n, seed, split, SFT_NAME):
        rejected, kind = rejected_answer(example, seed)
        rows.append(
            {
                "prompt": [{"role": "user", "content": example.prompt}],
                "chosen": [{"role": "assistant", "content": example.completion}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "task": example.task,
                "answer": example.answer,
                "checker": example.checker,
                "kind": kind,
            }
        )
    return rows
