"""Each run's record on disk: `<output_dir>/<run>/result.json`, written atomically when the run ends and
reused by a re-run only with the same settings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from psft.errors import UserError
from psft.experiments.plan import CompareConfig

EVAL_FORMAT = "log-spaced evaluations, per-prompt results, held-out NLL (psft 25)"


# per run: one line per evaluation with every prompt's result (psft.eval.callback), gzipped (a research-preset run
# writes ~380 KB of it, 36 KB compressed: committed reports keep every run's prompts); runs written before are
# plain `prompts.jsonl`, still read
PROMPTS = "prompts.jsonl.gz"
PLAIN_PROMPTS = "prompts.jsonl"


def run_settings(config: CompareConfig, run: dict[str, Any]) -> dict[str, Any]:
    """Everything that decides a run's result: a finished run is reused only if these are unchanged."""
    keys = ("model", "train_data", "in_domain", "out_of_domain", "eval_size", "ood_eval_size", "eval_every")
    from psft.tasks.base import TASKS_VERSION

    # runs finished before per-prompt results and log-spaced evaluations differ in `schedule`, runs on an older
    # version of the built-in tasks (another split) in `tasks`: neither is reused
    settings = {
        **{k: getattr(config, k) for k in keys},
        "max_new_tokens": config.max_new_tokens,
        "training": config.training,
        "overrides": run["overrides"],
        "seed": run["seed"],
        "schedule": EVAL_FORMAT,
        "tasks": TASKS_VERSION,
    }
    # fields added later enter only when set: the settings of every run made before them stay the same
    if config.train_size is not None:
        settings["train_size"] = config.train_size
    return settings


RESULT = "result.json"  # each run's record, in its directory, written as soon as the run finishes


def _write_json(path: Path, data: Any) -> None:
    """Write through a temporary file and rename: a kill mid-write never leaves a truncated file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def changed_settings(expected: dict[str, Any], recorded: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two `run_settings` (either may lack a key)."""
    return sorted(k for k in set(expected) | set(recorded) if expected.get(k) != recorded.get(k))


def _finished(out: Path, config: CompareConfig, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's record if it finished with the same settings; None if not there; an error if it differs."""
    path = out / run["id"] / RESULT
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: unreadable ({err}); delete it to rerun that run") from None
    expected = run_settings(config, run)
    recorded = result.get("settings", {})
    if recorded != expected:
        changed = changed_settings(expected, recorded)
        raise UserError(
            f"{path}: finished with other settings ({', '.join(changed)}); use another --output_dir or delete "
            "that run directory to rerun it"
        )
    return result


def write_prompts(rows: list[dict[str, Any]], run_dir: Path) -> Path:
    """A run's per-prompt results as gzipped JSON lines, through a temporary file (no timestamp in the header:
    the same results give the same bytes)."""
    path = run_dir / PROMPTS
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)
    return path


def read_prompts(run_dir: Path) -> list[dict[str, Any]] | None:
    """A run's per-prompt results (`prompts.jsonl.gz`, or an older run's plain `prompts.jsonl`); None if it has
    neither."""
    for name, read in (
        (PROMPTS, lambda p: gzip.decompress(p.read_bytes()).decode()),
        (PLAIN_PROMPTS, Path.read_text),
    ):
        path = run_dir / name
        if path.is_file():
            try:
                return [json.loads(line) for line in read(path).splitlines() if line]
            except (ValueError, OSError, EOFError) as err:
                raise UserError(
                    f"{path}: unreadable ({err}); delete that run directory to rerun it"
                ) from None
    return None


def load_prompts(out: Path, results: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per finished run, the per-prompt results of its evaluations (runs without them are left out and the
    report resamples seeds only)."""
    found = {result["id"]: read_prompts(out / result["id"]) for result in results}
    return {run_id: rows for run_id, rows in found.items() if rows is not None}
