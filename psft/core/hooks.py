"""Every override of a private transformers / TRL hook, in one class (UpstreamHooks). PSFTTrainer's bases put
it right before SFTTrainer, so super() here is TRL's / transformers' own method. What each override relies
on (signature and meaning, as of transformers 5.24 / TRL 1.16 / accelerate 1.16) is written in
psft._compat.HOOKS; importing this module checks them (psft._compat.check_hooks), so an upstream release
that changed one fails with one line naming the supported range instead of training wrongly."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from datasets import Dataset
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints
from transformers.utils import logging

from psft._compat import check_hooks, training_values
from psft.core.checkpoint import STAGING_PREFIX, publish, remove_staging, write_manifest
from psft.core.config import PSFTConfig
from psft.core.logprobs import OLD_LOG_PROBS, REF_LOG_PROBS
from psft.core.run_meaning import save_run_meaning
from psft.data.sft import validate_records
from psft.errors import UserError

logger = logging.get_logger(__name__)

check_hooks()  # every contract of psft._compat.HOOKS, before any hook below can run


class UpstreamHooks:
    """Every override of a private transformers / TRL hook (their contracts: `psft._compat.HOOKS`)."""

    # ---------------------------------------------------------------------- data
    # TRL 1.16 SFTTrainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func,
    # dataset_name): tokenizes the raw records; we validate them before and count the truncation drops after
    # (contract: psft._compat.HOOKS, checked at import)
    def _prepare_dataset(
        self,
        dataset: Any,
        processing_class: Any,
        args: Any,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Any:
        """Validate raw records first; after tokenisation, refuse (or count) records truncation emptied."""
        skip = args.skip_invalid_records
        source = f"{dataset_name} dataset"
        if formatting_func is None:
            dataset = validate_records(dataset, source, args.dataset_text_field, skip)
        before = len(dataset) if isinstance(dataset, Dataset) else None
        prepared = super()._prepare_dataset(
            dataset, processing_class, args, packing, formatting_func, dataset_name
        )
        if before is None or packing or args.max_length is None or not isinstance(prepared, Dataset):
            return prepared
        dropped = before - len(prepared)
        if dropped:
            message = (
                f"{source}: {dropped} of {before} records have no loss token left after truncation to "
                f"max_length={args.max_length}"
            )
            if not skip:
                raise UserError(
                    f"{message}; raise max_length, set truncation_mode='keep_end', or set "
                    "skip_invalid_records=true to drop them"
                )
            logger.warning(f"{message}: skipped (skip_invalid_records)")
        if len(prepared) == 0:
            raise UserError(f"{source}: no record is left to train on")
        return prepared

    # transformers 5.24 Trainer._get_grad_norm(model, grad_norm): called once per optimizer step after
    # clipping, before optimizer.step(); we veto a non-finite step there (contract: psft._compat.HOOKS,
    # checked at import)
    def _get_grad_norm(self, model: torch.nn.Module, grad_norm: Any = None) -> Any:
        """Called once per optimizer step just before `optimizer.step()`: the place to veto the step."""
        grad_norm = super()._get_grad_norm(model, grad_norm)
        self._skip_if_nonfinite(model, grad_norm)
        return grad_norm

    # transformers 5.24 Trainer._get_output_dir(trial): the directory _save_checkpoint writes checkpoint-N
    # under; we point it at a staging dir (contract: psft._compat.HOOKS, checked at import)
    def _get_output_dir(self, trial: Any) -> str:
        return self._staging_dir or super()._get_output_dir(trial)

    # transformers 5.24 Trainer._save_checkpoint(model, trial): writes <_get_output_dir>/checkpoint-N; we
    # stage it, add the run state, then rename (contract: psft._compat.HOOKS, checked at import)
    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """The Trainer's checkpoint plus the run state, written to a staging folder and renamed when complete."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging = os.path.join(run_dir, STAGING_PREFIX + name)
        if self.args.should_save:
            remove_staging(run_dir)
        self.accelerator.wait_for_everyone()
        self._staging_dir = staging
        try:
            super()._save_checkpoint(model, trial)
            self.run_state.save(os.path.join(staging, name), self.args.process_index, self.state.global_step)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        best = self.state.best_model_checkpoint
        if best is not None and best.startswith(staging):  # the Trainer saw the staged path
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staging, name, "trainer_state.json"))
        if self.args.should_save:
            save_run_meaning(os.path.join(staging, name), self._run_meaning())
            write_manifest(os.path.join(staging, name))  # last: marks the checkpoint complete
            publish(os.path.join(staging, name), final)
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ schedule
    # transformers 5.24 Trainer.set_initial_training_values(args, dataloader): returns the 7-tuple of step
    # counts (`training_values`); we scale the updates per epoch by rollout_epochs (contract:
    # psft._compat.HOOKS, checked at import)
    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> tuple:
        """With `rollout_epochs` E > 1 each mini-batch is used E times: scale the Trainer's step counts."""
        if has_length(dataloader) and len(dataloader) == 0:
            raise UserError(
                "the training data is smaller than one batch of per_device_train_batch_size x processes with "
                "dataloader_drop_last=true: add data, lower per_device_train_batch_size, or set "
                "dataloader_drop_last=false"
            )
        values = training_values(super().set_initial_training_values(args, dataloader))
        self.schedule = self._make_schedule(values.updates_per_epoch, values.max_steps)
        if has_length(dataloader):
            _warn_if_rollouts_are_cut(self.args, values.updates_per_epoch)
        epochs = self.args.rollout_epochs
        if epochs == 1 or not has_length(dataloader):
            return values
        updates_per_epoch = values.updates_per_epoch * epochs
        num_train_epochs, max_steps = values.num_train_epochs, values.max_steps
        if args.max_steps > 0:
            num_train_epochs = math.ceil(max_steps / updates_per_epoch)
        else:
            max_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
        self.schedule = self._make_schedule(updates_per_epoch, max_steps)
        return values._replace(
            num_train_epochs=num_train_epochs,
            updates_per_epoch=updates_per_epoch,
            # every mini-batch is padded to full gradient accumulation (see `_next_rollout`)
            steps_in_epoch=updates_per_epoch * args.gradient_accumulation_steps,
            max_steps=max_steps,
        )

    # transformers 5.24 Trainer.get_batch_samples(epoch_iterator, num_batches, device): called once per
    # optimizer step for its micro-batches and loss-token count; we hand out the rollout's next mini-batch
    # (contract: psft._compat.HOOKS, checked at import)
    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """One optimizer step's micro-batches, drawn from the current rollout (a new one where the schedule
        says; also after a resume, so refreshes fall where they would have without the interruption)."""
        run = self.run_state
        if epoch_iterator is not self._rollout_iterator:  # a new epoch starts a new rollout
            self._rollout_iterator, run.pending = epoch_iterator, []
        if not run.pending:
            run.pending = self._next_rollout(epoch_iterator)
        batch_samples = run.pending.pop(0) if run.pending else []
        return batch_samples, self._count_loss_tokens(batch_samples, device)

    # transformers 5.24 Trainer._prepare_inputs(inputs): moves a micro-batch to the device (DeepSpeed: casting
    # floats to its dtype); we keep the attached float32 old/reference log-probs out of the cast (contract:
    # psft._compat.HOOKS, checked at import)
    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's, except that attached old/reference log-probs stay float32. Under DeepSpeed,
        `Trainer._prepare_input` (transformers 5.23-5.24) casts every floating input to the engine's dtype, which in
        bf16 would round them (ratio off by up to ~1.5% on an unchanged model)."""
        attached = {k: inputs[k] for k in (OLD_LOG_PROBS, REF_LOG_PROBS) if k in inputs}
        if not attached:
            return super()._prepare_inputs(inputs)
        prepared = super()._prepare_inputs({k: v for k, v in inputs.items() if k not in attached})
        prepared.update({k: v.to(self.args.device) for k, v in attached.items()})
        return prepared


def _warn_if_rollouts_are_cut(args: PSFTConfig, updates_per_epoch: int) -> None:
    """An epoch shorter than a rollout cuts every rollout to fewer than K steps (at the epoch's end), so the
    trust region has fewer steps to act on; with one step per epoch PSFT is SFT."""
    k = args.mini_batches_per_rollout
    partial = args.rollout_epochs == 1 and updates_per_epoch < k
    if partial and args.needs_old_log_probs and args.old_policy == "rollout":
        logger.warning(
            f"one epoch is {updates_per_epoch} optimizer steps, fewer than mini_batches_per_rollout={k}: rollouts "
            f"are cut at each epoch's end to {updates_per_epoch} steps"
            + (" (every ratio is 1: this is SFT)" if updates_per_epoch == 1 else "")
            + "; lower mini_batches_per_rollout or the batch size to get K steps per rollout"
        )
