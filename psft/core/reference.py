"""Reference log-probs without a second model in memory.

The training data are fixed, so the reference (initial) model's per-token log-probs on them can be computed
once, before the first update, and looked up later by the content of each row: a row's log-probs depend only
on its tokens, so the table is keyed by content and any shuffling, batching or padding of the data finds them.
Only the loss tokens' log-probs are stored (what `sft_kl`/`asft` read): 4 bytes per loss token, far below a second
copy of the model. Each process scores a shard of the data; the shards are then merged on every process. The table
lives in the output directory; every checkpoint records its `fingerprint()` (`psft.core.run_state`), so a resume with a
table another run wrote there is refused.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model
from rich.progress import track
from torch import Tensor
from torch.utils.data import DataLoader
from transformers.trainer_utils import has_length
from transformers.utils import logging
from trl.models.utils import prepare_deepspeed, prepare_fsdp

from psft.core.logprobs import (
    OLD_LOG_PROBS,
    REF_LOG_PROBS,
    ensure_fused_head,
    label_log_probs,
    next_token_logits,
)
from psft.errors import UserError

logger = logging.get_logger(__name__)


def _targets(batch: dict[str, Tensor]) -> Tensor:
    """The next-token targets of a micro-batch, `(batch, seq - 1)` (`(batch, seq)` when pre-shifted)."""
    return batch["shift_labels"] if "shift_labels" in batch else batch["labels"][:, 1:]


def _rows(batch: dict[str, Tensor]) -> Iterator[tuple[int, Tensor, bytes]]:
    """(row, its loss-token mask over the targets, content key) for every row of a padded micro-batch. The key
    hashes the row's real tokens and which of them are loss targets, counted among the real tokens only, so the same
    row padded on the left, on the right or not at all has one key; the same text with another loss mask is another
    row."""
    if "position_ids" in batch and "attention_mask" not in batch:
        raise UserError(
            "reference log-probs cannot be precomputed for packed (padding-free) batches; "
            "set packing: false, or use a LoRA adapter (reference = adapter disabled) or reference: copy"
        )
    input_ids, targets = batch["input_ids"], _targets(batch)
    mask = batch.get("attention_mask")
    length = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        loss = targets[row] != -100
        # target j predicts token j + 1 (`labels[:, 1:]` and pre-shifted `shift_labels` alike)
        predicted = torch.zeros(length, dtype=torch.bool, device=loss.device)
        predicted[1:] = loss[: length - 1]
        real = torch.ones_like(predicted) if mask is None else mask[row].bool().to(loss.device)
        key = hashlib.sha1(input_ids[row][real.to(input_ids.device)].to("cpu", torch.int64).numpy().tobytes())
        # target index among the real tokens (the same bytes as before left padding was handled: old tables load)
        targets_at = predicted[real].nonzero().flatten() - 1
        key.update(targets_at.to("cpu", torch.int64).numpy().tobytes())
        yield row, loss, key.digest()


class ReferenceTable:
    """Per-token reference log-probs of the loss tokens of every training row, keyed by the row's content."""

    def __init__(self) -> None:
        self.rows: dict[bytes, Tensor] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, batch: dict[str, Tensor], log_probs: Tensor) -> None:
        """Store the loss tokens' log-probs of a micro-batch's rows; `log_probs` is laid out like its targets."""
        for row, loss, key in _rows(batch):
            self.rows[key] = log_probs[row][loss].detach().float().cpu()

    def update(self, other: dict[bytes, Tensor]) -> None:
        """Merge another table's rows (another process's shard)."""
        self.rows.update(other)

    def lookup(self, batch: dict[str, Tensor]) -> Tensor:
        """The stored log-probs laid out like the micro-batch's targets (zeros off the loss tokens)."""
        out = torch.zeros(_targets(batch).shape, device=batch["input_ids"].device)
        for row, loss, key in _rows(batch):
            if key not in self.rows:
                raise UserError(
                    "a training row has no precomputed reference log-probs: the training data changed since "
                    "they were computed (a resumed run must train on the same data)"
                )
            out[row, loss.to(out.device)] = self.rows[key].to(out.device)
        return out

    def fingerprint(self) -> str:
        """A hash of the table's contents (rows and values, in key order): what a checkpoint records."""
        digest = hashlib.sha1(str(len(self.rows)).encode())
        for key in sorted(self.rows):
            digest.update(key)
            digest.update(self.rows[key].numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write atomically: a crash mid-save leaves the previous file (or none), never a torn one."""
        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        torch.save(self.rows, partial)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceTable:
        table = cls()
        table.rows = torch.load(path, weights_only=True)
        return table


# ------------------------------------------------------------------ live reference (whole distribution)
def vocabulary_size(model: torch.nn.Module) -> int:
    """Rows of `model`'s next-token distribution (its text config's `vocab_size`, kept up to date by
    `resize_token_embeddings`)."""
    causal_lm = model.get_base_model() if is_peft_model(model) else model
    return causal_lm.config.get_text_config().vocab_size


class ReferenceSource:
    """The reference (initial) model, live: one source for its label log-probs and its whole next-token distribution.

    Either a frozen copy of the starting model (`model`), or the trained PEFT model itself with its adapter disabled
    for the call (`adapter=model`, as TRL's trainers do). The precomputed `ReferenceTable` stores only the loss
    tokens' log-probs, so it can serve `label_log_probs` consumers (`sft_kl`, `asft_label_kl`, a fixed old policy)
    but not the distribution `asft` needs. Both calls run in eval mode without gradient.
    """

    def __init__(self, model: torch.nn.Module, adapter: torch.nn.Module | None = None) -> None:
        self.model, self.adapter = model, adapter

    @contextmanager
    def _active(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            with self.adapter.disable_adapter() if self.adapter is not None else contextlib.nullcontext():
                yield
        finally:
            self.model.train(was_training)

    def label_log_probs(self, inputs: dict[str, Any]) -> Tensor:
        """Float32 log-probs of the labels, exactly as `psft.core.logprobs.label_log_probs` computes the policy's."""
        with self._active():
            return label_log_probs(self.model, inputs)

    @torch.no_grad()
    def logits(self, inputs: dict[str, Any]) -> Tensor:
        """Next-token logits `(batch, seq - 1, vocab)` at every position (`next_token_logits`), model dtype."""
        with self._active():
            return next_token_logits(self.model, inputs)[0]


def check_reference_vocabulary(reference: torch.nn.Module, model: torch.nn.Module) -> None:
    """A reference whose vocabulary differs from the model's cannot give a KL over the same tokens: one line."""
    ours, theirs = vocabulary_size(model), vocabulary_size(reference)
    if ours != theirs:
        raise UserError(
            f"the reference model's vocabulary ({theirs} tokens) differs from the trained model's ({ours}): set "
            "reference to 'copy' (a frozen copy of the starting model) or 'adapter' (PEFT), not another model"
        )


REFERENCE_FILE = "reference_log_probs.pt"


class ReferencePolicy:
    """."""

    # ----------------------------------------------------------------- reference
    def _reference_mode(self) -> str:
        """`args.reference` with "auto" resolved, checked against the model."""
        mode = self.args.reference
        peft = is_peft_model(self.model)
        if mode == "auto":
            # the table stores label log-probs only; the whole distribution needs a live reference
            mode = "adapter" if peft else "copy" if self.args.needs_reference_logits else "precompute"
        if mode == "precompute" and self.args.needs_reference_logits:
            raise UserError(
                f"reference='precompute' stores only the reference's label log-probs, but loss_type="
                f"{self.args.loss_type!r} needs its whole next-token distribution: set reference to 'copy' (or "
                "'adapter' with a PEFT model, or 'auto')"
            )
        if mode == "adapter" and not peft:
            raise UserError(
                "reference='adapter' needs a PEFT model (pass peft_config); use 'precompute' or 'copy'"
            )
        return mode

    def _frozen_copy(self) -> torch.nn.Module:
        model = copy.deepcopy(self.accelerator.unwrap_model(self.model))
        # TRL's fused head closes over the original model's forward: without it, the copy's plain forward (the whole
        # distribution, `asft`) would run the trained model. Patch the copy afresh.
        model.__dict__.pop("forward", None)
        ensure_fused_head(model)
        model.requires_grad_(False)
        return model.eval()

    def _prepared_reference_copy(self) -> torch.nn.Module:
        """The frozen copy, wrapped like the trained model (autocast, FSDP2 sharding, DeepSpeed) on first use, so
        that its pass computes what the training forward would with the initial parameters."""
        if not getattr(self._ref_model, "_psft_prepared", False):
            if self.is_deepspeed_enabled:
                self._ref_engine = prepare_deepspeed(self._ref_model, self.accelerator)  # keeps its hooks alive
                self._ref_model = self._ref_engine.module
            elif self.is_fsdp_enabled:
                self._ref_model = prepare_fsdp(self._ref_model, self.accelerator)
            else:
                self._ref_model = self.accelerator.prepare_model(self._ref_model, evaluation_mode=True)
            self._ref_model._psft_prepared = True
        return self._ref_model

    def _reference_log_probs(self, micro_batch: dict[str, Any]) -> Tensor:
        """The reference (initial) model's per-token log-probs on one micro-batch."""
        if self.reference in ("adapter", "copy"):
            inputs = self._prepare_inputs(micro_batch)
            inputs = {k: v for k, v in inputs.items() if k not in (OLD_LOG_PROBS, REF_LOG_PROBS)}
            with self.compute_loss_context_manager(), self._engine_forward_context():
                return self._reference_source().label_log_probs(inputs)
        if self._ref_table is None:
            self._ref_table = self._build_reference_table()
        return self._ref_table.lookup(micro_batch)

    def _build_reference_table(self) -> ReferenceTable:
        """One pass of the initial model over the training data, before its first update: each process scores a
        contiguous shard, then every process gets the merged table. Saved in output_dir so that a resumed run (whose
        model is no longer the initial one) can load it; its fingerprint goes into the run state (every checkpoint),
        so a resume with a table another run wrote is refused."""
        path = Path(self.args.output_dir) / REFERENCE_FILE
        if self.state.global_step > 0:
            return self._load_reference_table(path)
        if not has_length(self.train_dataset):
            raise UserError("reference='precompute' needs a sized training dataset; use 'adapter' or 'copy'")
        dataset = self._remove_unused_columns(self.train_dataset, description="reference")
        processes, index = self.accelerator.num_processes, self.accelerator.process_index
        batch_size = self.args.per_device_train_batch_size
        # Every process runs the same number of forwards, whatever its shard's size (65 records on 2 processes:
        # 33 and 32): FSDP2 and ZeRO-3 gather parameters in each forward, a collective that every process must
        # join. A process whose shard is done scores a filler batch and discards it.
        forwards = math.ceil(math.ceil(len(dataset) / processes) / batch_size)
        filler = self.data_collator([dataset[0]])
        if processes > 1:
            dataset = dataset.shard(num_shards=processes, index=index, contiguous=True)
        batches = iter(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator))
        table = ReferenceTable()
        for _ in track(
            range(forwards), description="Reference log-probs", disable=not self.is_world_process_zero()
        ):
            batch = next(batches, None)
            inputs = self._prepare_inputs(filler if batch is None else batch)
            log_probs = self._log_probs(self.model, inputs)
            if batch is not None:
                table.add(inputs, log_probs)
        if processes > 1:
            shards = gather_object([table.rows])  # every process's shard, on every process
            table = ReferenceTable()
            for rows in shards:
                table.update(rows)
        self.run_state.reference = self._describe_reference(table)
        if self.is_world_process_zero():
            path.parent.mkdir(parents=True, exist_ok=True)
            table.save(path)
        return table

    def _describe_reference(self, table: ReferenceTable) -> dict[str, str]:
        """What a checkpoint records about the reference table: its fingerprint and what it was made from."""
        model = self.accelerator.unwrap_model(self.model)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        return {
            "table": table.fingerprint(),
            "rows": str(len(table)),
            "model": str(getattr(model.config, "_name_or_path", "")),
            "tokenizer": f"{getattr(tokenizer, 'name_or_path', '')} ({len(tokenizer) if tokenizer else 0} tokens)",
            "data": str(self._run_meaning()["data"]),
        }

    def _load_reference_table(self, path: Path) -> ReferenceTable:
        """A resumed run's reference table: the one this run made, checked against the checkpoint's record."""
        if not path.is_file():
            raise UserError(f"resuming needs the initial model's reference log-probs, missing at {path}")
        logger.info(f"Loading reference log-probs from {path}")
        table = ReferenceTable.load(path)
        saved = self.run_state.reference
        if saved is None:
            logger.warning(
                f"the checkpoint records no reference table: cannot check that {path} is this run's"
            )
            return table
        found = table.fingerprint()
        if found != saved["table"]:
            raise UserError(
                f"resume_from_checkpoint: {path} is not this run's reference table (fingerprint {found[:12]}, the "
                f"checkpoint's is {saved['table'][:12]}, made from {saved['model']} on data {saved['data'][:12]}): "
                "another run wrote it into output_dir; put this run's table back or start afresh in another "
                "output_dir"
            )
        return table
