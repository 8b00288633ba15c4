"""Loading training data: a hub dataset name or a local JSON / JSONL / Parquet file, in TRL's formats."""

from __future__ import annotations

import json
import os

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset

from psft.errors import UserError

BUILTIN_PREFIX = "psft/"  # `psft/<task>`: a task of the built-in synthetic suite (psft.tasks)
BUILTIN_TEST_SIZE = 100
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}

# The record formats TRL's SFTTrainer accepts, as the columns that identify them.
FORMATS = {
    "language modeling": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "conversational": ("messages",),
    "conversational (from/value)": ("conversations",),
}


def load_sft_dataset(
    name_or_path: str,
    config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    text_field: str = "text",
) -> Dataset | IterableDataset:
    """Load one split from a local file (by extension), the built-in suite (`psft/<task>`) or the hub, and
    check it is in a format TRL trains on."""
    if name_or_path.startswith(BUILTIN_PREFIX) and not os.path.exists(name_or_path):
        return builtin_dataset(name_or_path[len(BUILTIN_PREFIX) :], split)
    extension = os.path.splitext(name_or_path)[1].lower()
    if extension in LOCAL_BUILDERS or os.path.exists(name_or_path):
        if not os.path.isfile(name_or_path):
            raise UserError(f"{name_or_path}: no such data file")
        if extension not in LOCAL_BUILDERS:
            raise UserError(f"{name_or_path}: unsupported file type; use .json, .jsonl or .parquet")
        if extension == ".jsonl":
            check_jsonl(name_or_path)
        try:
            dataset = load_dataset(
                LOCAL_BUILDERS[extension], data_files=name_or_path, split="train", streaming=streaming
            )
        except Exception as err:  # datasets wraps parse errors in several exception types
            raise UserError(f"{name_or_path}: cannot be read as {extension[1:]}: {_first_line(err)}") from err
    else:
        dataset = load_dataset(name_or_path, name=config, split=split, streaming=streaming)
    if isinstance(dataset, DatasetDict):  # a hub dataset without the split asked for
        raise UserError(f"{name_or_path}: no split {split!r}; it has {', '.join(dataset)}")
    check_format(dataset, name_or_path, text_field)
    return dataset


def builtin_dataset(task: str, split: str = "train") -> Dataset:
    """A task of the built-in suite as conversational records: the fixed training set or the held-out test set."""
    from psft.tasks import IN_DOMAIN_TRAIN_SIZE, generate, to_record

    if split not in ("train", "test"):
        raise UserError(f"{BUILTIN_PREFIX}{task}: no split {split!r}; built-in datasets have train and test")
    size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
    return Dataset.from_list([to_record(example) for example in generate(task, size, seed=0, split=split)])


def check_jsonl(path: str) -> int:
    """Every non-blank line of a JSONL file is a UTF-8 JSON object; the error names the first bad line."""
    count = 0
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
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            count += 1
    if count == 0:
        raise UserError(f"{path}: the file has no records")
    return count


def check_format(dataset: Dataset | IterableDataset, source: str, text_field: str = "text") -> str:
    """The name of the dataset's TRL format; a clear error naming the columns if it has none."""
    columns = set(dataset.column_names or [])
    if "input_ids" in columns:
        return "tokenized"
    for name, needed in FORMATS.items():
        needed = (text_field,) if needed == ("text",) else needed
        if set(needed) <= columns:
            return name
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise UserError(f"{source}: the dataset is empty")
    expected = "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMATS.items())
    raise UserError(f"{source}: columns {sorted(columns)} match no known format ({expected})")


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
