"""A synthetic task suite in the paper's regime, small enough for a character-level model on a CPU.

General tasks (`GENERAL_TASKS`) are what the built-in base model (`psft/tiny-base`) is pretrained on and
the out-of-domain set; the in-domain task (`IN_DOMAIN_TASK`, arithmetic as a `\\boxed{}` reasoning trace)
is related but new to it, and its training set is small and fixed, to be trained for several epochs.

    from psft.tasks import generate, write_suite
    train = generate("arith", 500, seed=0, split="train")
    paths = write_suite("data/", fmt="messages")      # JSONL files ready for `psft train`
"""

from __future__ import annotations

from pathlib import Path

from psft.data.validate import write_jsonl
from psft.errors import UserError
from psft.tasks.arith import sample_arith
from psft.tasks.base import SPLITS, Example, Sampler, sample_unique, split_of
from psft.tasks.general import GENERAL_SAMPLERS
from psft.tasks.instruct import sample_instruct, sample_trivia, sample_word_math
from psft.tasks.preference import PAIRS_NAME, SFT_NAME, preference_pairs, sample_pref

# for a real instruct model (psft convert): in-domain word problems, out-of-domain format instructions
INSTRUCT_TASKS = {"word_math": sample_word_math, "trivia": sample_trivia, "instruct": sample_instruct}
TASKS: dict[str, Sampler] = GENERAL_SAMPLERS | {"arith": sample_arith, SFT_NAME: sample_pref} | INSTRUCT_TASKS
PREFERENCE_TASKS = {PAIRS_NAME: preference_pairs}  # `psft/pref`: chosen/rejected pairs for `psft dpo`
GENERAL_TASKS: tuple[str, ...] = tuple(GENERAL_SAMPLERS)
IN_DOMAIN_TASK = "arith"
IN_DOMAIN_TRAIN_SIZE = 500  # LIMO-like: a few hundred demonstrations, seen for many epochs
FORMATS = ("messages", "prompt_completion", "plain")

__all__ = [
    "FORMATS",
    "GENERAL_TASKS",
    "IN_DOMAIN_TASK",
    "IN_DOMAIN_TRAIN_SIZE",
    "PREFERENCE_TASKS",
    "SPLITS",
    "TASKS",
    "Example",
    "generate",
    "split_of",
    "to_record",
    "write_jsonl",
    "write_suite",
]


def generate(task: str, n: int, seed: int = 0, split: str = "train") -> list[Example]:
    """`n` distinct problems of `task` from `split`; the same list for the same arguments, on any machine."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return sample_unique(TASKS[task], n, seed, split, task)


def to_record(example: Example, fmt: str = "messages") -> dict:
    """A JSON-ready record in a format TRL's SFTTrainer reads, plus `task`, `answer` and `checker` fields.

    "messages": conversational language modeling; "prompt_completion": conversational prompt/completion;
    "plain": prompt/completion strings (no chat template applied by TRL).
    """
    user = {"role": "user", "content": example.prompt}
    assistant = {"role": "assistant", "content": example.completion}
    if fmt == "messages":
        record = {"messages": [user, assistant]}
    elif fmt == "prompt_completion":
        record = {"prompt": [user], "completion": [assistant]}
    elif fmt == "plain":
        record = {"prompt": example.prompt, "completion": example.completion}
    else:
        raise UserError(f"unknown record format {fmt!r}; choose one of {FORMATS}")
    return record | {"task": example.task, "answer": example.answer, "checker": example.checker}


def write_suite(
    out_dir: str | Path,
    fmt: str = "messages",
    seed: int = 0,
    n_train: int = IN_DOMAIN_TRAIN_SIZE,
    n_test: int = 100,
) -> dict[str, Path]:
    """The demo's data: the fixed in-domain training set, its test split, and `n_test` test problems per
    general task (out-of-domain), as `in_domain_train.jsonl`, `in_domain_test.jsonl`, `general_test.jsonl`."""
    out_dir = Path(out_dir)
    general = [ex for task in GENERAL_TASKS for ex in generate(task, n_test, seed, "test")]
    files = {
        "in_domain_train": generate(IN_DOMAIN_TASK, n_train, seed, "train"),
        "in_domain_test": generate(IN_DOMAIN_TASK, n_test, seed, "test"),
        "general_test": general,
    }
    return {
        name: write_jsonl((to_record(ex, fmt) for ex in examples), out_dir / f"{name}.jsonl")
        for name, examples in files.items()
    }
