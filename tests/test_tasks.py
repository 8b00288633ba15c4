"""The synthetic task suite: deterministic generators, disjoint splits, right references, checkers, TRL formats."""

from __future__ import annotations

import json
import re

import pytest
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.tasks import (
    FORMATS,
    GENERAL_TASKS,
    IN_DOMAIN_TASK,
    IN_DOMAIN_TRAIN_SIZE,
    INSTRUCT_TASKS,
    TASKS,
    generate,
    split_of,
    to_record,
    write_suite,
)


@pytest.mark.parametrize("task", list(TASKS))
def test_generator_is_deterministic_in_seed(task):
    first = generate(task, 30, seed=7)
    assert first == generate(task, 30, seed=7)
    assert first != generate(task, 30, seed=8)
    assert len({e.prompt for e in first}) == 30


@pytest.mark.parametrize("task", list(TASKS))
def test_train_and_test_splits_are_disjoint(task):
    n_test, n_train = (100, 500) if task == IN_DOMAIN_TASK else (150, 600) if task in INSTRUCT_TASKS else (300, 600)
    train = {e.prompt for seed in (0, 1) for e in generate(task, n_train, seed=seed, split="train")}
    test = generate(task, n_test, seed=0, split="test")
    assert all(split_of(e) == "test" for e in test)
    assert train.isdisjoint(e.prompt for e in test)


def test_in_domain_train_set_is_fixed_and_disjoint_from_all_its_test_problems():
    train = generate(IN_DOMAIN_TASK, IN_DOMAIN_TRAIN_SIZE, seed=0)
    assert train == generate(IN_DOMAIN_TASK, IN_DOMAIN_TRAIN_SIZE, seed=0)
    # the test split of this task is small enough to exhaust: ask for more than exists
    with pytest.raises(UserError, match="fewer than"):
        generate(IN_DOMAIN_TASK, 400, split="test")
    test = generate(IN_DOMAIN_TASK, 100, split="test")  # the built-in test set's size
    assert {e.prompt for e in train}.isdisjoint(e.prompt for e in test)


def test_in_domain_trace_is_correct_arithmetic_ending_in_boxed_answer():
    for e in generate(IN_DOMAIN_TASK, 300, seed=3):
        expression = re.fullmatch(r"Compute ([1-9]\+[1-9]\+[1-9])\.", e.prompt).group(1)
        assert e.answer == str(eval(expression))  # noqa: S307 (digits and + only)
        steps = e.completion.split(". ")
        assert steps[-1] == f"\\boxed{{{e.answer}}}"
        for step in steps[:-1]:
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs)  # noqa: S307
        assert e.checker == "math" and len(e.prompt) + len(e.completion) < 64


def test_general_references_are_right():
    for e in generate("reverse", 50):
        assert e.answer == e.prompt.removeprefix("Reverse ").removesuffix(".")[::-1]
    for e in generate("add", 50):
        a, b = map(int, re.fullmatch(r"What is (\d+)\+(\d+)\?", e.prompt).groups())
        assert e.answer == str(a + b)
    for e in generate("length", 50):
        assert e.answer == str(len(re.fullmatch(r"How many letters in ([a-z]+)\?", e.prompt).group(1)))
    for e in generate("json", 50):
        assert json.loads(e.completion) == {"answer": e.answer} and e.prompt.endswith("Reply in JSON.")
    tiny_model_tasks = [t for t in TASKS if t not in INSTRUCT_TASKS]  # those are for a BPE instruct model
    assert max(len(e.prompt) + len(e.completion) for t in tiny_model_tasks for e in generate(t, 200)) < 64


@pytest.mark.parametrize("task", [t for t in TASKS if t not in ("trivia", "instruct")])  # see test_instruct_tasks
def test_reference_completions_pass_their_checker_and_wrong_answers_fail(task):
    for e in generate(task, 20, seed=1):
        check = get_checker(e.checker)
        assert check(e.completion, e.answer), e
        wrong = "1" + e.answer + "0"
        assert not check(e.completion.replace(e.answer, wrong), e.answer), e
        assert not check("", e.answer)


def test_format_checkers_need_the_format_and_the_answer():
    json_check, brackets = get_checker("json_answer"), get_checker("bracketed")
    assert json_check('{"answer": "olleh"}', "olleh") and json_check(' {"answer":"12"}\n', "12")
    assert json_check('{"answer": 12}', "12")
    for bad in (
        "olleh",
        '{"answer": "hello"}',
        '{"answer": "olleh"',
        '{"result": "olleh"}',
        '{"answer": "olleh", "x": 1}',
        '["olleh"]',
        'Sure: {"answer": "olleh"}',
    ):
        assert not json_check(bad, "olleh"), bad
    assert brackets("[HELLO]", "HELLO") and brackets(" [7]\n", "7")
    for bad in ("HELLO", "[HELLO", "(HELLO)", "[HELL]", "[HELLO] done", "[[HELLO]]"):
        assert not brackets(bad, "HELLO"), bad


def test_math_checker_reads_the_boxed_answer_of_a_trace():
    check = get_checker("math")
    assert check("3+4=7. 7+2=9. \\boxed{9}", "9")
    assert not check("3+4=7. 7+2=10. \\boxed{10}", "9")
    assert not check("3+4=7. 7+2=9. \\boxed{7}", "9")


def _prepared(records: list[dict], assistant_only_loss: bool):
    """SFTTrainer's prepared train dataset for `records`, after one training step on the tiny model."""
    tokenizer = make_char_tokenizer()
    model = make_tiny_llama(tokenizer, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    args = SFTConfig(
        output_dir="unused",
        report_to=[],
        assistant_only_loss=assistant_only_loss,
        max_steps=1,
        per_device_train_batch_size=4,
        use_cpu=True,
        save_strategy="no",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer
    )
    trainer.train()  # the collator takes the records, extra fields included
    return trainer.train_dataset, tokenizer


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_go_through_trl_sft_preparation_with_end_of_turn_in_the_loss(fmt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    examples = generate("json", 4) + generate(IN_DOMAIN_TASK, 4)
    records = [to_record(e, fmt) for e in examples]
    assert [(r["answer"], r["checker"]) for r in records] == [(e.answer, e.checker) for e in examples]
    prepared, tokenizer = _prepared(records, assistant_only_loss=fmt != "plain")
    assert len(prepared) == len(examples)
    for row, e in zip(prepared, examples, strict=True):
        trained = [t for t in row["labels"] if t != -100]
        assert tokenizer.decode(trained) == e.completion + "<|im_end|>"
        assert trained[-1] == tokenizer.eos_token_id


def test_write_suite_writes_jsonl_of_each_split(tmp_path):
    paths = write_suite(tmp_path, fmt="prompt_completion", n_train=50, n_test=10)
    rows = {
        name: [json.loads(line) for line in path.read_text().splitlines()] for name, path in paths.items()
    }
    assert len(rows["in_domain_train"]) == 50 and len(rows["in_domain_test"]) == 10
    assert [r["task"] for r in rows["general_test"]] == [t for t in GENERAL_TASKS for _ in range(10)]
    assert rows["in_domain_train"][0]["completion"][0]["role"] == "assistant"
    with pytest.raises(UserError):
        to_record(generate("add", 1)[0], "sharegpt")
