"""Checks of single training records in TRL's formats: what is wrong with one record, naming the field.

Used on every line of a JSONL file (the error names the line) and on every record of a `datasets.Dataset`
passed to the trainer (the error names the record), so bad data fails before tokenisation instead of
training silently on empty or mangled examples.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# Roles chat templates know; anything else ("human", "gpt", "bot") is almost always a format mix-up.
KNOWN_ROLES = ("system", "developer", "user", "assistant", "tool")

# The record formats TRL's SFTTrainer accepts, as the columns that identify them.
FORMATS = {
    "language modeling": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "conversational": ("messages",),
    "conversational (from/value)": ("conversations",),
}


def record_format(columns: set[str] | list[str], text_field: str = "text") -> str | None:
    """The TRL format a set of columns is in (`"tokenized"` for `input_ids`), or None."""
    columns = set(columns)
    if "input_ids" in columns:
        return "tokenized"
    for name, needed in FORMATS.items():
        needed = (text_field,) if needed == ("text",) else needed
        if set(needed) <= columns:
            return name
    return None


def record_problem(record: dict[str, Any], fmt: str, text_field: str = "text") -> tuple[str, str] | None:
    """`(field, what is wrong)` for one record of format `fmt`, or None if it can be trained on."""
    if fmt == "tokenized":
        ids = record.get("input_ids")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
            return "input_ids", f"must be a non-empty list of token ids, got {_show(ids)}"
        return None
    if fmt == "language modeling":
        return _text(record, text_field, allow_empty=False)
    if fmt == "conversational":
        return _messages(record, "messages", "role", "content", need_assistant=True)
    if fmt == "conversational (from/value)":
        return _messages(record, "conversations", "from", "value", need_assistant=True)
    if fmt == "prompt-completion":
        if isinstance(record.get("prompt"), list) or isinstance(record.get("completion"), list):
            return _messages(record, "prompt", "role", "content", need_assistant=False) or _messages(
                record, "completion", "role", "content", need_assistant=True
            )
        return _text(record, "prompt", allow_empty=True) or _text(record, "completion", allow_empty=False)
    raise ValueError(f"unknown record format {fmt!r}")


def _text(record: dict[str, Any], field: str, allow_empty: bool) -> tuple[str, str] | None:
    value = record.get(field)
    if value is None:
        return field, "missing"
    if not isinstance(value, str):
        return field, f"must be a string, got {_show(value)}"
    if not allow_empty and not value.strip():
        return field, "is empty: nothing to train on"
    return None


def _messages(
    record: dict[str, Any], field: str, role_key: str, content_key: str, need_assistant: bool
) -> tuple[str, str] | None:
    """A list of {role, content} dicts with known roles; with `need_assistant`, one non-empty assistant turn."""
    messages = record.get(field)
    if messages is None:
        return field, "missing"
    if not isinstance(messages, list) or not messages:
        return (
            field,
            f"must be a non-empty list of {{{role_key}, {content_key}}} messages, got {_show(messages)}",
        )
    trained = False
    for i, message in enumerate(messages):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            return where, f"must be a {{{role_key}, {content_key}}} object, got {_show(message)}"
        role, content = message.get(role_key), message.get(content_key)
        if role not in KNOWN_ROLES:
            return f"{where}.{role_key}", f"unknown role {role!r}; use one of {', '.join(KNOWN_ROLES)}"
        if content is None and not message.get("tool_calls"):
            return f"{where}.{content_key}", "missing"
        if content is not None and not isinstance(content, (str, list)):
            return f"{where}.{content_key}", f"must be a string, got {_show(content)}"
        if role == "assistant" and (message.get("tool_calls") or _non_empty(content)):
            trained = True
    if need_assistant and not trained:
        return field, "has no non-empty assistant message: nothing to train on"
    return None


def _non_empty(content: str | list | None) -> bool:
    return bool(content.strip()) if isinstance(content, str) else bool(content)


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write one JSON object per line (UTF-8), creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path
