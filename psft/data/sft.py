"""Loading training data: a hub dataset name or a local JSON / JSONL / Parquet file, in TRL's formats."""

from __future__ import annotations

import json
from typing import Any

from datasets import Dataset, IterableDataset
from transformers.utils import logging

from psft.data.sources import (  # noqa: F401  (the names below moved to psft.data.sources, the one data resolver)
    BUILTIN_PREFIX,
    BUILTIN_TEST_SIZE,
    LOCAL_BUILDERS,
    builtin_rows,
    is_builtin,
    local_file_extension,
    read_dataset,
    resolve_source,
)
from psft.data.validate import FORMATS, record_format, record_problem, write_jsonl  # noqa: F401  (write_jsonl: old import)
from psft.errors import UserError

logger = logging.get_logger(__name__)

JSON_WHITESPACE = " \t\r\n"  # what JSON (and so a blank JSONL line) may hold between values
SKIP_HINT = "; fix the record or set skip_invalid_records=true to skip invalid records"


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
    source = resolve_source(name_or_path)
    if source.kind == "builtin":
        return builtin_dataset(name_or_path, split)
    if source.kind == "file":
        extension = source.extension
        lines = extension == ".jsonl" or (extension == ".json" and json_file_is_lines(name_or_path))
        bad_lines = check_jsonl(name_or_path, text_field, skip_invalid) if lines else []
        if bad_lines and not streaming:
            return Dataset.from_list(_jsonl_records(name_or_path, set(bad_lines)))
    dataset = read_dataset(source, split, config, streaming)
    return validate_records(dataset, name_or_path, text_field, skip_invalid)


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
    or raise a one-line error naming the model and the fix. See `psft.data.templates`."""
    from psft.data.templates import prepare_training_template

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
