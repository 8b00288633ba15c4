"""Loading training data: a hub dataset name or a local JSON / JSONL / Parquet file, in TRL's formats."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, IterableDataset, load_dataset
from transformers.utils import logging

from psft.errors import UserError
from psft.records import FORMATS, record_format, record_problem

logger = logging.get_logger(__name__)

BUILTIN_PREFIX = "psft/"  # `psft/<task>`: a task of the built-in synthetic suite (psft.tasks)
BUILTIN_TEST_SIZE = 100
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}

JSON_WHITESPACE = " \t\r\n"  # what JSON (and so a blank JSONL line) may hold between values
SKIP_HINT = "; fix the record or set skip_invalid_records=true to skip invalid records"


def local_file_extension(name: str) -> str | None:
    """The extension of `name` when it names a local data file (`.json`, `.jsonl` or `.parquet`, which must
    exist), None when it is not a path (a hub dataset name); an error for a missing file or another type."""
    extension = os.path.splitext(name)[1].lower()
    if extension not in LOCAL_BUILDERS and not os.path.exists(name):
        return None
    if not os.path.isfile(name):
        raise UserError(f"{name}: no such data file")
    if extension not in LOCAL_BUILDERS:
        raise UserError(f"{name}: unsupported file type; use .json, .jsonl or .parquet")
    return extension


def load_sft_dataset(
    name_or_path: str,
    config: str | None = None,
    split: str = "train",
    streaming: bool = False,
    text_field: str = "text",
    skip_invalid: bool = False,
) -> Dataset | IterableDataset:
    """Load one split from a local file (by extension), the built-in suite (`psft/<task>`) or the hub, and
    check every record is one TRL trains on (`validate_records`); with `skip_invalid`, drop and count bad ones."""
    if is_builtin(name_or_path):
        return builtin_dataset(name_or_path[len(BUILTIN_PREFIX) :], split)
    extension = local_file_extension(name_or_path)
    if extension is not None:
        lines = extension == ".jsonl" or (extension == ".json" and json_file_is_lines(name_or_path))
        bad_lines = check_jsonl(name_or_path, text_field, skip_invalid) if lines else []
        if bad_lines and not streaming:
            return Dataset.from_list(_jsonl_records(name_or_path, set(bad_lines)))
        try:
            dataset = load_dataset(
                LOCAL_BUILDERS[extension], data_files=name_or_path, split="train", streaming=streaming
            )
        except Exception as err:  # datasets wraps parse errors in several exception types
            raise UserError(f"{name_or_path}: cannot be read as {extension[1:]}: {_first_line(err)}") from err
    else:
        try:
            dataset = load_dataset(name_or_path, name=config, split=split, streaming=streaming)
        except OSError as err:  # neither on disk nor on the hub (or the hub is unreachable)
            raise UserError(
                f"{name_or_path}: no such data file (looked for {os.path.abspath(name_or_path)}), and no hub "
                f"dataset of that name ({_first_line(err)}); local files need a .json, .jsonl or .parquet extension"
            ) from None
    if isinstance(dataset, DatasetDict):  # a hub dataset without the split asked for
        raise UserError(f"{name_or_path}: no split {split!r}; it has {', '.join(dataset)}")
    return validate_records(dataset, name_or_path, text_field, skip_invalid)


def is_builtin(name: str) -> bool:
    """Whether `name` is a dataset of the built-in suite (`psft/<task>`) rather than a local path."""
    return name.startswith(BUILTIN_PREFIX) and not os.path.exists(name)


def builtin_rows(name: str, split: str = "train", fmt: str = "messages") -> list[dict[str, Any]]:
    """Records of `psft/<task>` (`psft/general`: every general task): the fixed training set or the held-out
    test set, in a TRL format (`psft.tasks.to_record`), with `task`, `answer` and `checker` fields."""
    from psft.tasks import GENERAL_TASKS, IN_DOMAIN_TRAIN_SIZE, generate, to_record

    task = name[len(BUILTIN_PREFIX) :] if name.startswith(BUILTIN_PREFIX) else name
    if split not in ("train", "test"):
        raise UserError(f"{BUILTIN_PREFIX}{task}: no split {split!r}; built-in datasets have train and test")
    size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
    tasks = GENERAL_TASKS if task == "general" else (task,)
    return [to_record(ex, fmt) for t in tasks for ex in generate(t, size, seed=0, split=split)]


def builtin_dataset(task: str, split: str = "train") -> Dataset:
    """A task of the built-in suite as conversational records: the fixed training set or the held-out test set."""
    return Dataset.from_list(builtin_rows(task, split))


def check_jsonl(path: str, text_field: str = "text", skip_invalid: bool = False) -> list[int]:
    """Check every non-blank line of a JSONL file: UTF-8, a JSON object, one format, a trainable record.

    The error names the first bad line and field. With `skip_invalid`, bad lines are counted and logged
    instead, and their line numbers returned; every line bad, or no line at all, is still an error."""
    count, bad, fmt = 0, [], None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                problem, fmt = _jsonl_line_problem(raw, fmt, text_field)
            except _BlankLine:
                continue
            count += 1
            if problem is None:
                continue
            if not skip_invalid:
                raise UserError(f"{path}:{number}: {problem}{SKIP_HINT}")
            bad.append(number)
            logger.warning(f"{path}:{number}: skipped: {problem}")
    if count == 0:
        raise UserError(f"{path}: the file has no records")
    if len(bad) == count:
        raise UserError(f"{path}: all {count} records are invalid (first at line {bad[0]})")
    if bad:
        logger.warning(f"{path}: skipped {len(bad)} invalid records of {count} (skip_invalid_records)")
    return bad


def _jsonl_records(path: str, skip_lines: set[int]) -> list[dict]:
    """The records of a checked JSONL file, without the lines given."""
    with open(path, "rb") as f:
        lines = [
            (n, raw)
            for n, raw in enumerate(f, start=1)
            if n not in skip_lines and raw.strip(JSON_WHITESPACE.encode())
        ]
    return [json.loads(raw.decode("utf-8-sig" if n == 1 else "utf-8")) for n, raw in lines]


def json_file_is_lines(path: str) -> bool:
    """Whether a `.json` file is JSON Lines (True) or one JSON value (False, then a list of records). A file
    holding one object or anything else but a list is an error: `datasets` would read it as one record."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8-sig", errors="replace").lstrip()
    if head.startswith("["):
        return False
    first = head.split("\n", 1)[0].strip()
    try:
        json.loads(first)  # a whole value on the first line: JSON Lines if anything follows
    except json.JSONDecodeError:
        first = None
    if first is not None and head[len(first) :].strip():
        return True
    try:
        with open(path, encoding="utf-8-sig") as f:
            value = json.load(f)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # values after the first: JSON Lines with a very long first line
            return True
        raise UserError(
            f"{path}: not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"
        ) from None
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if isinstance(value, dict):
        found = f"one object with keys {sorted(value)[:5]}"
    else:
        found = f"a JSON {type(value).__name__}"
    raise UserError(
        f"{path}: a .json file must hold a list of records ([{{...}}, ...]) or one record per line (JSON Lines); "
        f"it holds {found}"
    )


class _BlankLine(Exception):
    pass


def _jsonl_line_problem(raw: bytes, fmt: str | None, text_field: str) -> tuple[str | None, str | None]:
    """(what is wrong with one JSONL line or None, the file's format as set by its first good record)."""
    try:
        line = raw.decode("utf-8-sig")  # a byte-order mark is only stripped where it is (the first line)
    except UnicodeDecodeError as err:
        return f"not UTF-8 text ({err.reason} at byte {err.start})", fmt
    if not line.strip(JSON_WHITESPACE):  # other whitespace (\v, \f) is not blank to JSON or pyarrow
        raise _BlankLine
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg} (column {err.colno})", fmt
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}", fmt
    found = record_format(record, text_field) or fmt  # a known file format names the missing field
    if found is None:
        return f"fields {sorted(record)} match no known format ({_formats_help()})", fmt
    if fmt is not None and found != fmt:
        return f"a {found} record in a {fmt} file (fields {sorted(record)})", fmt
    problem = record_problem(record, found, text_field)
    if problem is not None:
        return f"field {problem[0]!r}: {problem[1]}", fmt or found
    return None, fmt or found


def validate_records(
    dataset: Dataset | IterableDataset,
    source: str = "dataset",
    text_field: str = "text",
    skip_invalid: bool = False,
) -> Dataset | IterableDataset:
    """Check every record of a map-style dataset before tokenisation; the error names the record and field.

    With `skip_invalid`, bad records are dropped with a logged count instead. Streaming (iterable) datasets
    are only checked for their format: reading them here would consume them."""
    fmt = check_format(dataset, source, text_field)
    if not isinstance(dataset, Dataset):
        return dataset
    if len(dataset) == 0:
        raise UserError(f"{source}: the dataset is empty")
    if fmt == "tokenized":
        return dataset
    columns = [
        c
        for c in dataset.column_names
        if c in (text_field, "prompt", "completion", "messages", "conversations")
    ]
    bad = []
    for start in range(0, len(dataset), 1000):
        rows = dataset.select_columns(columns)[start : start + 1000]
        for offset in range(len(rows[columns[0]])):
            record = {c: rows[c][offset] for c in columns}
            problem = record_problem(record, fmt, text_field)
            if problem is None:
                continue
            index = start + offset
            message = f"{source}: record {index}: field {problem[0]!r}: {problem[1]}"
            if not skip_invalid:
                raise UserError(message + SKIP_HINT)
            bad.append(index)
            if len(bad) <= 10:
                logger.warning(f"skipped: {message}")
    if len(bad) == len(dataset):
        raise UserError(f"{source}: all {len(bad)} records are invalid (first: record {bad[0]})")
    if bad:
        logger.warning(
            f"{source}: skipped {len(bad)} invalid records of {len(dataset)} (skip_invalid_records)"
        )
        dropped = set(bad)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in dropped])
    return dataset


def check_chat_template(tokenizer: Any, chat_template_path: str | None = None, model_name: str = "model") -> None:
    """With `assistant_only_loss`: make `tokenizer` carry the chat template the run trains with (the user's
    `chat_template_path`, or psft's checked patch of a ChatML template without `{% generation %}` markers),
    or raise a one-line error naming the model and the fix. See `psft.templates`."""
    from psft.templates import prepare_training_template

    template = prepare_training_template(tokenizer, chat_template_path, model_name)
    if template is not None:
        tokenizer.chat_template = template


def check_format(dataset: Dataset | IterableDataset, source: str, text_field: str = "text") -> str:
    """The name of the dataset's TRL format; a clear error naming the columns if it has none."""
    columns = set(dataset.column_names or [])
    fmt = record_format(columns, text_field)
    if fmt is not None:
        return fmt
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise UserError(f"{source}: the dataset is empty")
    raise UserError(f"{source}: columns {sorted(columns)} match no known format ({_formats_help()})")


def _formats_help() -> str:
    return "; ".join(f"{name}: {', '.join(cols)}" for name, cols in FORMATS.items())


def _first_line(err: BaseException) -> str:
    cause = err.__cause__ or err
    return str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
