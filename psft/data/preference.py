"""Preference data for DPO: records with prompt / chosen / rejected, checked one by one (file, line, field)
before training, from a built-in task, a local file or the hub."""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset
from trl.data_utils import extract_prompt

from psft.data.sources import BUILTIN_TEST_SIZE, check_builtin_task, read_dataset, resolve_source
from psft.data.validate import record_problem
from psft.errors import UserError


def preference_problem(record: dict[str, Any]) -> tuple[str, str] | None:
    """`(field, what is wrong)` for one preference record (explicit prompt, or TRL's implicit one), or None.

    `chosen` and `rejected` are each checked as the completion of the prompt (`psft.data.validate.record_problem`):
    text, or chat messages with a non-empty assistant turn, in the prompt's format."""
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            return name, "missing"
        if not isinstance(record[name], (str, list)):
            return name, f"must be a string or a list of messages, got {type(record[name]).__name__}"
    if record.get("prompt") is None:  # implicit prompt: the conversations' common first turns
        if not (isinstance(record["chosen"], list) and isinstance(record["rejected"], list)):
            return "prompt", "missing (only conversational chosen/rejected may leave the prompt implicit)"
        for name in ("chosen", "rejected"):
            problem = record_problem({"messages": record[name]}, "conversational")
            if problem is not None:
                return name + problem[0].removeprefix("messages"), problem[1]
        record = extract_prompt(record)
        if not record["prompt"]:
            return "prompt", "missing, and chosen and rejected share no first turns to take it from"
    for name in ("chosen", "rejected"):
        problem = record_problem(
            {"prompt": record["prompt"], "completion": record[name]}, "prompt-completion"
        )
        if problem is not None:
            return name + problem[0].removeprefix("completion"), problem[1]
    if record["chosen"] == record["rejected"]:
        return "rejected", "identical to chosen: the pair states no preference"
    return None


def check_preference_jsonl(path: str) -> None:
    """Check every non-blank line of a JSONL preference file; the error names the first bad line and field."""
    count, first = 0, None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})"
                ) from None
            if not line.strip():
                continue
            count += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            problem = preference_problem(record)
            if problem is not None:
                raise UserError(f"{path}:{number}: field {problem[0]!r}: {problem[1]}")
            kind = "conversational" if isinstance(record["chosen"], list) else "plain-text"
            first = first or kind
            if kind != first:
                raise UserError(f"{path}:{number}: a {kind} record in a {first} file (one format per file)")
    if count == 0:
        raise UserError(f"{path}: the file has no records")


def _validated(dataset: Dataset, source: str) -> Dataset:
    """Every record checked (the error names it), and implicit prompts made explicit with TRL's `extract_prompt`."""
    if len(dataset) == 0:
        raise UserError(f"{source}: the dataset is empty")
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{source}: no {' or '.join(missing)} column (columns: {', '.join(dataset.column_names)}); "
            "preference data has prompt, chosen and rejected"
        )
    columns = [c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names]
    for index, row in enumerate(dataset.select_columns(columns)):
        problem = preference_problem(row)
        if problem is not None:
            raise UserError(f"{source}: record {index}: field {problem[0]!r}: {problem[1]}")
    if "prompt" not in dataset.column_names:
        dataset = dataset.map(extract_prompt)
    return dataset


def load_preference_dataset(name: str, split: str = "train", config: str | None = None) -> Dataset:
    """Preference pairs from `psft/pref`, a local .jsonl/.json/.parquet file or a hub dataset, each record
    checked (`preference_problem`): a bad one is a `UserError` naming its line or index and field."""
    from psft.tasks import IN_DOMAIN_TRAIN_SIZE, PREFERENCE_TASKS, TASKS

    source = resolve_source(name)
    if source.kind == "builtin":
        hint = " (an SFT task)" if source.task in TASKS else ""
        task = check_builtin_task(name, list(PREFERENCE_TASKS), "built-in preference dataset", hint)
        if split not in ("train", "test"):
            raise UserError(f"{name}: no split {split!r}; built-in datasets have train and test")
        size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
        return Dataset.from_list(PREFERENCE_TASKS[task](size, seed=0, split=split))
    if source.kind == "file" and source.extension == ".jsonl":
        check_preference_jsonl(name)
    dataset = read_dataset(source, split, config)
    return _validated(dataset, name)
