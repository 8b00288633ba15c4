"""Evaluation records: load a file or hub dataset and normalise each row to prompt + reference.

Accepted rows (TRL's formats, plus evaluation fields):

- ``{"prompt": str, "completion": str}`` or conversational ``{"prompt": [messages], "completion": [messages]}``;
- ``{"messages": [...]}``: the last assistant message is the reference, everything before it the prompt;
- ``answer`` (optional) overrides the reference taken from the completion;
- ``task`` (optional, default ``"default"``) groups accuracy; ``checker`` (optional) names the checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from psft.errors import UserError


@dataclass
class EvalRecord:
    """One prompt to answer: `prompt` is text or a list of chat messages."""

    prompt: str | list[dict[str, Any]]
    reference: str
    task: str = "default"
    checker: str | None = None


def load_rows(data: str, split: str = "test") -> list[dict[str, Any]]:
    """Rows of a local JSON/JSONL/Parquet file, of a built-in dataset (`psft/<task>`), or of a hub dataset's
    `split` (`psft.data.sources`)."""
    from psft.data.sources import builtin_rows, read_dataset, resolve_source

    source = resolve_source(data)
    if source.kind == "builtin":
        return builtin_rows(data, split)
    return list(read_dataset(source, split))


def _last_assistant(messages: list[dict[str, Any]]) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "assistant":
            return i
    return None


def to_record(row: dict[str, Any], where: str = "row") -> EvalRecord:
    """Normalise one row; `where` (e.g. ``"data.jsonl:3"``) names it in error messages."""
    answer = row.get("answer")
    if "prompt" in row and row["prompt"] is not None:
        prompt = row["prompt"]
        completion = row.get("completion")
        if isinstance(completion, list):
            idx = _last_assistant(completion)
            completion = completion[idx]["content"] if idx is not None else None
    elif row.get("messages"):
        messages = row["messages"]
        idx = _last_assistant(messages)
        if idx is None or idx == 0:
            raise UserError(f"{where}: field 'messages' needs a prompt and a final assistant message")
        prompt, completion = messages[:idx], messages[idx]["content"]
    else:
        raise UserError(f"{where}: missing field 'prompt' (or 'messages')")
    reference = answer if answer is not None else completion
    if reference is None:
        raise UserError(f"{where}: missing field 'answer' or 'completion' (the reference)")
    if not isinstance(prompt, (str, list)):
        raise UserError(f"{where}: field 'prompt' must be a string or a list of messages")
    return EvalRecord(prompt, str(reference), str(row.get("task") or "default"), row.get("checker"))


def load_records(
    data: str | list[dict[str, Any]],
    split: str = "test",
    tasks: list[str] | None = None,
    limit: int | None = None,
) -> list[EvalRecord]:
    """Evaluation records from a path, hub name or list of rows; keep only `tasks` if given, first `limit`."""
    rows = load_rows(data, split) if isinstance(data, str) else list(data)
    name = data if isinstance(data, str) else "row"
    records = [to_record(row, f"{name}:{i + 1}") for i, row in enumerate(rows)]
    if tasks:
        found = sorted({r.task for r in records})
        missing = [t for t in tasks if t not in found]
        if missing:
            raise UserError(f"{name}: no records with task {missing[0]!r}; tasks present: {', '.join(found)}")
        records = [r for r in records if r.task in tasks]
    return records[:limit] if limit else records


def render_prompt(tokenizer, prompt: str | list[dict[str, Any]]) -> str:
    """Prompt text the model sees: chat messages go through the chat template with a generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def render_text(tokenizer, row: dict[str, Any]) -> str:
    """Full text of a row (for drift): ``text``, prompt + completion, or the whole conversation."""
    if isinstance(row.get("text"), str):
        return row["text"]
    if isinstance(row.get("messages"), list):
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):
        return tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt + completion
    raise UserError("drift data rows need 'text', 'messages', or 'prompt' + 'completion'")
