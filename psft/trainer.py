"""`PSFTTrainer`: TRL's `SFTTrainer` with a registered per-token objective and PSFT's rollout schedule.

The schedule (`../shared/PSFT.md` §2) lives in `get_batch_samples`, the hook where `transformers.Trainer`
fetches one optimizer step's micro-batches. At the start of a rollout it fetches K optimizer steps' worth
of micro-batches at once, computes the current model's per-token log-probs on them without gradient (the
old policy), attaches them to the micro-batches, and then hands the mini-batches out one optimizer step at
a time. The first mini-batch needs no extra forward: its ratio is exactly 1, so its old log-probs are the
detached current ones. Data order, gradient accumulation, clipping, the LR scheduler, logging and
checkpointing stay the Trainer's own.

The loss is the exact token-mean over every loss token of the optimizer step, across gradient-accumulation
micro-batches and processes (verl's per-micro-batch mean is not).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor
from transformers import TrainingArguments
from transformers.trainer_utils import has_length
from trl import SFTTrainer

from psft.config import LOSS_ALIASES, PSFTConfig
from psft.losses import get_loss, token_mean

OLD_LOG_PROBS = "old_log_probs"


def _to_psft_config(args: TrainingArguments | None, model: Any) -> PSFTConfig:
    """Accept a PSFTConfig, a TRL SFTConfig or plain TrainingArguments, like SFTTrainer does."""
    if isinstance(args, PSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
        return PSFTConfig(output_dir=f"{str(name).rstrip('/').split('/')[-1]}-PSFT")
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
    if "loss_type" in values:
        values["loss_type"] = LOSS_ALIASES.get(values["loss_type"], values["loss_type"])
    return PSFTConfig(**values)


class PSFTTrainer(SFTTrainer):
    """Drop-in for `trl.SFTTrainer` training with `args.loss_type` (default `"psft"`) on PSFT's schedule.

    Everything SFTTrainer does (dataset formats, chat templates, completion-only and assistant-only loss,
    packing, PEFT, logging integrations) works unchanged. Extra metrics logged at each logging step: `nll`,
    `entropy`, `mean_token_accuracy`, and for objectives with an old policy `clip_ratio/high`,
    `clip_ratio/low`, `ratio/mean`, `ratio/max`, `approx_kl` and `rollout`.
    """

    _tag_names = ["trl", "sft", "psft"]
    _name = "PSFT"
    # compute_loss divides by the loss tokens of the whole optimizer step itself
    loss_is_scaled_for_ga = True

    def __init__(self, model: Any, args: TrainingArguments | None = None, **kwargs: Any):
        args = _to_psft_config(args, model)
        # SFTTrainer.__init__ only knows its own loss names; ours were validated by PSFTConfig.
        loss_type, args.loss_type = args.loss_type, "nll"
        try:
            super().__init__(model, args=args, **kwargs)
        finally:
            args.loss_type = loss_type
        self.loss_spec = get_loss(loss_type)
        self._rollout_iterator = None  # the epoch iterator the pending rollout was drawn from
        self._pending: list[
            list[dict[str, Any]]
        ] = []  # mini-batches of the current rollout not yet handed out
        self._rollout_index = 0  # rollouts started so far (old-policy refreshes)
        self._updates_per_epoch = 0  # optimizer steps per epoch, set when training starts
        self._sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._ratio_max = torch.full((), -math.inf, device=self.args.device)

    # ------------------------------------------------------------------ schedule
    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> tuple:
        """With `rollout_epochs` E > 1 each mini-batch is used E times: scale the Trainer's step counts."""
        values = super().set_initial_training_values(args, dataloader)
        self._updates_per_epoch = values[1]
        epochs = self.args.rollout_epochs
        if epochs == 1 or not has_length(dataloader):
            return values
        num_train_epochs, updates_per_epoch, num_examples, num_samples, total_batch, _, max_steps = values
        updates_per_epoch *= epochs
        self._updates_per_epoch = updates_per_epoch
        # every mini-batch is padded to full gradient accumulation (see `_next_rollout`)
        steps_in_epoch = updates_per_epoch * args.gradient_accumulation_steps
        if args.max_steps > 0:
            num_train_epochs = math.ceil(max_steps / updates_per_epoch)
        else:
            max_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
        return (
            num_train_epochs,
            updates_per_epoch,
            num_examples,
            num_samples,
            total_batch,
            steps_in_epoch,
            max_steps,
        )

    def get_batch_samples(
        self, epoch_iterator: Any, num_batches: int, device: torch.device
    ) -> tuple[list, Any]:
        """One optimizer step's micro-batches, drawn from the current rollout (a new one every K steps)."""
        if epoch_iterator is not self._rollout_iterator:  # a new epoch starts a new rollout
            self._rollout_iterator, self._pending = epoch_iterator, []
        if not self._pending:
            self._pending = self._next_rollout(epoch_iterator)
        batch_samples = self._pending.pop(0) if self._pending else []
        return batch_samples, self._count_loss_tokens(batch_samples, device)

    def _next_rollout(self, epoch_iterator: Any) -> list[list[dict[str, Any]]]:
        """Fetch up to K mini-batches, compute the old policy's log-probs on them, and return the rollout's
        optimizer steps in order (each mini-batch `rollout_epochs` times)."""
        args = self.args
        accumulation, epochs = args.gradient_accumulation_steps, args.rollout_epochs
        num_mini = args.mini_batches_per_rollout
        if epochs == 1 and self._updates_per_epoch > 0:
            # Rollouts start every K optimizer steps from the start of the epoch, also after a resume.
            num_mini -= (self.state.global_step % self._updates_per_epoch) % num_mini
        if self.state.max_steps > 0:  # don't prefetch past the end of training
            num_mini = max(
                1, min(num_mini, math.ceil((self.state.max_steps - self.state.global_step) / epochs))
            )
        micro_batches = []
        for _ in range(num_mini * accumulation):
            try:
                micro_batches.append(next(epoch_iterator))
            except StopIteration:
                break
        if not micro_batches:
            return []
        # A partial rollout (end of epoch) keeps its partial last mini-batch; with E > 1 it is padded with
        # loss-free micro-batches so that every optimizer step has `accumulation` micro-batches.
        mini_batches = [
            micro_batches[i : i + accumulation] for i in range(0, len(micro_batches), accumulation)
        ]
        if epochs > 1:
            last = mini_batches[-1]
            last += [_without_loss_tokens(last[0]) for _ in range(accumulation - len(last))]
        if self._needs_old_log_probs():
            # With one pass, mini-batch 1 uses its own detached log-probs (ratio 1): no extra forward.
            for mini_batch in mini_batches[1 if epochs == 1 else 0 :]:
                for micro_batch in mini_batch:
                    micro_batch[OLD_LOG_PROBS] = self._old_log_probs(micro_batch)
        self._rollout_index += 1
        return [mini_batch for _ in range(epochs) for mini_batch in mini_batches]

    def _needs_old_log_probs(self) -> bool:
        return OLD_LOG_PROBS in self.loss_spec.tensors

    @torch.no_grad()
    def _old_log_probs(self, micro_batch: dict[str, Any]) -> Tensor:
        """Per-token log-probs of the current model on one micro-batch, in eval mode, without full logits."""
        model = self.model_wrapped
        was_training = model.training
        model.eval()
        try:
            inputs = self._prepare_inputs(micro_batch)
            with self.compute_loss_context_manager():
                outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        finally:
            model.train(was_training)
        return outputs.log_probs.detach().float()

    def _count_loss_tokens(self, batch_samples: list[dict[str, Any]], device: torch.device) -> Tensor | None:
        """Loss tokens of one optimizer step over all micro-batches and processes (the token-mean's divisor)."""
        if not batch_samples:
            return None
        count = sum(_shifted_labels(batch).ne(-100).sum() for batch in batch_samples).to(device)
        if self.accelerator.num_processes > 1:
            count = self.accelerator.reduce(count, reduction="sum")
        return count

    # ---------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """The registered objective, token-mean over the optimizer step. Evaluation keeps TRL's NLL."""
        old_log_probs = inputs.pop(OLD_LOG_PROBS, None)
        if not self.model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        outputs = model(**inputs, use_cache=False, fused_lm_head=True)
        log_probs = outputs.log_probs
        mask = outputs.label_mask.to(log_probs.dtype)
        tensors = {}
        if self._needs_old_log_probs():
            tensors[OLD_LOG_PROBS] = log_probs.detach() if old_log_probs is None else old_log_probs
        hparams = {name: getattr(self.args, name) for name in self.loss_spec.hparams}
        out = self.loss_spec.fn(log_probs, mask, **tensors, **hparams)
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        # DDP, FSDP and DeepSpeed average gradients over processes; the divisor already counts all of them.
        loss = token_mean(out.per_token, num_tokens) * self.accelerator.num_processes
        if self.aux_loss_enabled:
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss / steps
        self._accumulate_metrics(inputs, outputs, mask, out.metrics)
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------- metrics
    def _accumulate_metrics(self, inputs: dict[str, Any], outputs: Any, mask: Tensor, metrics: dict) -> None:
        """Sum per-token metrics locally; `log` reduces them over processes once per logging step."""
        sums = self._sums
        sums["tokens"] += mask.sum().detach()
        sums["nll"] += -(outputs.log_probs.detach() * mask).sum()
        sums["entropy"] += outputs.entropy.detach().sum()
        sums["correct"] += outputs.is_top1.sum()
        if "attention_mask" in inputs:
            sums["input_tokens"] += inputs["attention_mask"].sum()
        elif "position_ids" in inputs:
            sums["input_tokens"] += inputs["position_ids"].numel()
        for name, value in metrics.items():
            sums[name] += (value * mask).sum()
        if "ratio" in metrics and mask.any():
            self._ratio_max = torch.maximum(self._ratio_max, metrics["ratio"][mask.bool()].max())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training and self._sums:
            names = sorted(self._sums)
            totals = torch.stack([self._sums[name].float() for name in names])
            ratio_max = self._ratio_max.clone()
            if self.accelerator.num_processes > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
                ratio_max = self.accelerator.reduce(ratio_max, reduction="max")
            sums = dict(zip(names, totals.tolist(), strict=True))
            tokens = max(sums["tokens"], 1.0)
            logs["nll"] = sums["nll"] / tokens
            logs["entropy"] = sums["entropy"] / tokens
            logs["mean_token_accuracy"] = sums["correct"] / tokens
            self._total_train_tokens += int(sums.get("input_tokens", 0))
            logs["num_tokens"] = float(self._total_train_tokens)
            if "ratio" in sums:
                logs["clip_ratio/high"] = sums["clip_high"] / tokens
                logs["clip_ratio/low"] = sums["clip_low"] / tokens
                logs["ratio/mean"] = sums["ratio"] / tokens
                logs["ratio/max"] = ratio_max.item()
                logs["approx_kl"] = sums["approx_kl"] / tokens
            if self._needs_old_log_probs():
                logs["rollout"] = float(self._rollout_index)
            self._sums.clear()
            self._ratio_max.fill_(-math.inf)
        super().log(logs, start_time)


def _shifted_labels(batch: dict[str, Any]) -> Tensor:
    """The next-token targets of a micro-batch (what the fused LM head scores)."""
    return batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]


def _without_loss_tokens(micro_batch: dict[str, Any]) -> dict[str, Any]:
    """A copy of a micro-batch whose tokens are all ignored: pads a mini-batch without changing its gradient."""
    empty = dict(micro_batch)
    empty["labels"] = torch.full_like(micro_batch["labels"], -100)
    if "shift_labels" in empty:
        empty["shift_labels"] = torch.full_like(micro_batch["shift_labels"], -100)
    return empty
