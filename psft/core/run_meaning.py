"""What fixes a run's meaning (objective, schedule, batch shape, world size, data fingerprint): saved in every
checkpoint and checked before a resume, so a checkpoint never continues a different run."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from datasets import Dataset
from transformers.utils import logging

from psft.errors import UserError

logger = logging.get_logger(__name__)

RUN_FILE = "psft_run.json"


# PSFTConfig fields that fix what a run computes (besides the objective's own hyperparameters)
MEANING_FIELDS = (
    "loss_type",
    "mini_batches_per_rollout",
    "rollout_epochs",
    "old_policy",
    "sft_warmup_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "data_seed",
    "completion_only_loss",
    "assistant_only_loss",
)


# ---------------------------------------------------------------------------------------- meaning of a run
def run_meaning(args: Any, data: str | None) -> dict[str, Any]:
    """What fixes the meaning of a run with `args` (a `PSFTConfig`) on data with fingerprint `data`."""
    from psft.core.losses import get_loss

    names = MEANING_FIELDS + get_loss(args.loss_type).hparams
    meaning = {name: getattr(args, name) for name in names}
    meaning["world_size"] = args.world_size
    meaning["data"] = data
    return meaning


def save_run_meaning(directory: str, meaning: dict[str, Any]) -> None:
    with open(os.path.join(directory, RUN_FILE), "w") as f:
        json.dump(meaning, f, indent=1, sort_keys=True)


def check_run_meaning(checkpoint: str, meaning: dict[str, Any]) -> None:
    """Refuse to resume `checkpoint` with a run that means something else; silent for checkpoints without
    a record (written by other tools)."""
    path = os.path.join(checkpoint, RUN_FILE)
    if not os.path.isfile(path):
        logger.warning(f"{checkpoint} has no {RUN_FILE}: cannot check that the resumed run means the same")
        return
    with open(path) as f:
        saved = json.load(f)
    names = set(saved) | set(meaning)
    # the objective and schedule first (a changed loss_type explains changed hyperparameters), the data last
    order = (
        [n for n in MEANING_FIELDS if n in names] + sorted(names - set(MEANING_FIELDS) - {"data"}) + ["data"]
    )
    for name in order:
        before, now = saved.get(name), meaning.get(name)
        if before == now or (name == "data" and None in (before, now)):  # streaming data has no fingerprint
            continue
        if name == "data":
            raise UserError(
                f"resume_from_checkpoint: {checkpoint} was trained on other data (tokenised data fingerprint "
                f"{before[:12]}, this run's is {now[:12]}): same dataset, tokenizer and max_length are needed"
            )
        raise UserError(
            f"resume_from_checkpoint: {checkpoint} was saved with {name}={before!r}, this run has {name}={now!r}; "
            "resume with the same value or start a new run in another output_dir"
        )


def data_fingerprint(dataset: Any) -> str | None:
    """A hash of a map-style dataset's contents in order: its numeric columns (tokens, labels, masks: what
    training reads), or every column if it has none. None for a streaming dataset, which cannot be read here
    without consuming it. About 0.6 s per 20M tokens on one CPU core."""
    if not isinstance(dataset, Dataset):
        return None
    numeric = [name for name, feature in dataset.features.items() if _is_numeric(feature)]
    columns = sorted(numeric or dataset.column_names)
    digest = hashlib.sha1(f"{len(dataset)}:{columns}".encode())
    for table in dataset.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
        for name in columns:
            _hash_arrow(digest, table[name].combine_chunks())
    return digest.hexdigest()


def _is_numeric(feature: Any) -> bool:
    """Whether a `datasets` feature is a number or a (nested) list of numbers."""
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return _is_numeric(inner)
    dtype = getattr(feature, "dtype", "")
    return isinstance(dtype, str) and dtype.startswith(("int", "uint", "float", "bool"))


def _hash_arrow(digest: Any, array: Any) -> None:
    """Hash an Arrow array by value (independent of chunking and slicing offsets)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        _hash_arrow(digest, pc.list_value_length(array).fill_null(-1))
        _hash_arrow(digest, pc.list_flatten(array))
    elif (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)) and array.null_count == 0:
        digest.update(array.to_numpy(zero_copy_only=False).tobytes())
    else:  # text, structs, nulls: raw columns that the collator leaves alone
        digest.update(json.dumps(array.to_pylist(), sort_keys=True, default=str).encode())
