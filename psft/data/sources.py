"""One resolver of data names: a built-in task (`psft/<task>`), a local .json/.jsonl/.parquet file or a hub dataset.

Every loader of data (`psft.data.sft.load_sft_dataset`, `psft.data.preference.load_preference_dataset`, `psft.stages.rl.load_rl_dataset`,
`psft.stages.chain.load_data_rows`, `psft.eval.records.load_rows`) asks `resolve_source` what a name is and reads files
and hub datasets with `read_dataset`, so a name means the same and fails with the same message everywhere. What
each loader does with the rows (checking a format, normalising to prompt + reference) stays with it.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from psft.errors import UserError, first_line

BUILTIN_PREFIX = "psft/"  # `psft/<task>`: a task of the built-in synthetic suite (psft.tasks)
BUILTIN_TEST_SIZE = 100
LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class DataSource:
    """What a data name refers to: `kind` is "builtin" (`task` set), "file" (`extension` set) or "hub"."""

    name: str
    kind: str
    extension: str | None = None

    @property
    def task(self) -> str:
        """The built-in task's name (`psft/arith` -> `arith`)."""
        return self.name[len(BUILTIN_PREFIX) :] if self.name.startswith(BUILTIN_PREFIX) else self.name


def is_builtin(name: str) -> bool:
    """Whether `name` is a dataset of the built-in suite (`psft/<task>`) rather than a local path."""
    return name.startswith(BUILTIN_PREFIX) and not os.path.exists(name)


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


def resolve_source(name: str) -> DataSource:
    """What `name` is: `psft/<task>` (built-in, unless such a path exists), a local data file (checked: it exists
    and is .json/.jsonl/.parquet) or else a hub dataset name."""
    if is_builtin(name):
        return DataSource(name, "builtin")
    extension = local_file_extension(name)
    if extension is not None:
        return DataSource(name, "file", extension)
    return DataSource(name, "hub")


def check_builtin_task(name: str, known: list[str], what: str = "built-in dataset", hint: str = "") -> str:
    """The task of built-in `name` (`psft/<task>`) if it is one of `known`; else a UserError with a did-you-mean."""
    task = DataSource(name, "builtin").task
    if task in known:
        return task
    close = difflib.get_close_matches(task, known, n=1)
    suggestion = f"; did you mean {BUILTIN_PREFIX}{close[0]}?" if close else ""
    listed = ", ".join(BUILTIN_PREFIX + t for t in known)
    raise UserError(f"{name}: not a {what}{hint}{suggestion} (built-in: {listed})")


def sft_task_names() -> list[str]:
    """The names `psft/<name>` of the built-in SFT and evaluation data: every task, and `general` (all general
    tasks together)."""
    from psft.tasks import TASKS

    return [*TASKS, "general"]


def builtin_rows(name: str, split: str = "train", fmt: str = "messages") -> list[dict[str, Any]]:
    """Records of `psft/<task>` (`psft/general`: every general task): the fixed training set or the held-out
    test set, in a TRL format (`psft.tasks.to_record`), with `task`, `answer` and `checker` fields."""
    from psft.tasks import GENERAL_TASKS, IN_DOMAIN_TRAIN_SIZE, generate, to_record

    task = check_builtin_task(BUILTIN_PREFIX + DataSource(name, "builtin").task, sft_task_names())
    if split not in ("train", "test"):
        raise UserError(f"{BUILTIN_PREFIX}{task}: no split {split!r}; built-in datasets have train and test")
    size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
    tasks = GENERAL_TASKS if task == "general" else (task,)
    return [to_record(ex, fmt) for t in tasks for ex in generate(t, size, seed=0, split=split)]


def read_dataset(
    source: DataSource, split: str = "train", config: str | None = None, streaming: bool = False
) -> Any:
    """One split of a local file (its only split, "train") or of a hub dataset, with `datasets.load_dataset`; a
    UserError naming the source when the file does not parse, the hub has no such dataset (or cannot be reached)
    or the split is missing."""
    from datasets import DatasetDict, load_dataset
    from datasets.exceptions import DatasetsError
    from pyarrow import ArrowException

    if source.kind == "file":
        try:
            return load_dataset(
                LOCAL_BUILDERS[source.extension], data_files=source.name, split="train", streaming=streaming
            )
        # datasets wraps parse errors in these (pyarrow's ArrowInvalid, DatasetGenerationError, ...)
        except (DatasetsError, ArrowException, OSError, ValueError) as err:
            raise UserError(
                f"{source.name}: cannot be read as {source.extension[1:]}: {first_line(err.__cause__ or err)}"
            ) from err
    if source.kind != "hub":
        raise ValueError(f"read_dataset reads files and hub datasets, not {source.kind} data")
    try:
        dataset = load_dataset(source.name, name=config, split=split, streaming=streaming)
    except ValueError as err:  # a configuration or split the dataset does not have
        raise UserError(f"{source.name}: {first_line(err.__cause__ or err)}") from None
    except (DatasetsError, OSError) as err:  # neither on disk nor on the hub (or the hub is unreachable)
        from huggingface_hub import constants

        from psft.data.models import hub_unreachable

        why = None if constants.HF_HUB_OFFLINE else hub_unreachable()
        found = f"the Hugging Face hub is unreachable ({why})" if why else "no hub dataset of that name"
        raise UserError(
            f"{source.name}: no such data file (looked for {os.path.abspath(source.name)}), and {found} "
            f"({first_line(err.__cause__ or err)}); local files need a .json, .jsonl or .parquet extension"
        ) from None
    if isinstance(dataset, DatasetDict):  # a hub dataset without the split asked for
        raise UserError(f"{source.name}: no split {split!r}; it has {', '.join(dataset)}")
    return dataset
