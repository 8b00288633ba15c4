"""`PSFTTrainer`: TRL's `SFTTrainer` with a registered per-token objective and PSFT's rollout schedule.

The schedule (`../shared/PSFT.md` §2) is `psft.core.schedule.RolloutSchedule`, a pure function of the step; the
trainer follows it in `get_batch_samples`, the hook where `transformers.Trainer` fetches one optimizer step's
micro-batches. At the start of a rollout it fetches K optimizer steps' worth of micro-batches at once, computes
the current model's per-token log-probs on them without gradient (the old policy), attaches them to the
micro-batches, and then hands the mini-batches out one optimizer step at a time. The first mini-batch needs no
extra forward: its ratio is exactly 1, so its old log-probs are the detached current ones. Data order, gradient
accumulation, clipping, the LR scheduler, logging and checkpointing stay the Trainer's own. The run's mutable
state (rollout position, pending old log-probs, counters, reference fingerprint) is `self.run_state`
(`psft.core.run_state.RunState`), saved in every checkpoint.

The loss is the exact token-mean over every loss token of the optimizer step, across gradient-accumulation
micro-batches and processes (verl's per-micro-batch mean is not).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import defaultdict
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor
from transformers import TrainingArguments
from transformers.utils import logging
from trl import SFTTrainer
from trl.trainer.utils import disable_dropout_in_model

from psft._compat import check_versions, keep_hub_kernels_off, unkernelize
from psft.core.config import LOSS_ALIASES, PSFTConfig, accelerator_available
from psft.core.guards import ReliabilityMixin, check_honoured_options
from psft.core.hooks import UpstreamHooks
from psft.core.logprobs import (
    OLD_LOG_PROBS,
    REF_LOG_PROBS,
    label_log_probs,
    next_token_logits,
    policy_forward,
)
from psft.core.losses import full_entropy, get_loss, label_log_probs_from_logits, token_mean
from psft.core.reference import (
    ReferencePolicy,
    ReferenceSource,
    ReferenceTable,
    check_reference_vocabulary,
)
from psft.core.run_state import RunState
from psft.core.schedule import RolloutSchedule
from psft.data.models import resolve_model_name
from psft.errors import UserError

logger = logging.get_logger(__name__)

# next-token logits (batch, seq, vocab) of the model and the reference (objectives needing the distribution)
LOGITS, REF_LOGITS = "logits", "ref_logits"
LARGE_RATIO = 100.0
LARGE_RATIO_NOTE = (
    "ratio/max is above 100 (ratio/mean and approx_kl, means over tokens, follow it): tokens whose probability "
    "at the rollout start was tiny have risen by orders of magnitude within the rollout. This is expected while "
    "the data is new to the model (psft/tiny-base, for one, gives most psft/arith tokens a probability below "
    "1e-4); such tokens are clipped (zero gradient, counted in clip_ratio/high), so each update stays bounded. "
    "If it persists over many rollouts while nll stops falling, lower learning_rate or mini_batches_per_rollout."
)


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


class PSFTTrainer(ReliabilityMixin, ReferencePolicy, UpstreamHooks, SFTTrainer):
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
        check_versions()  # an unsupported transformers/TRL/accelerate/torch fails here in one line
        keep_hub_kernels_off()  # transformers 5.25+ would kernelize the model it loads (psft._compat)
        if not isinstance(model, str) and unkernelize(model):  # loaded by the caller, before that default
            logger.warning_once(
                "psft: the model came with hub kernels (transformers' default when `kernels` is installed); "
                "PSFTTrainer resets it to transformers' own layers so the old-policy pass matches training "
                "exactly (USE_HUB_KERNELS=YES keeps them)."
            )
        args = _to_psft_config(args, model)
        if isinstance(model, str):  # built-in names (`psft/tiny-base`) load from the package, not the hub
            model = resolve_model_name(model)
        if not accelerator_available():  # DeepSpeed (imported by accelerate) would warn that it found no GPU
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        check_honoured_options(args, kwargs.get("compute_loss_func"))
        # SFTTrainer.__init__ only knows its own loss names; ours were validated by PSFTConfig.
        loss_type, args.loss_type = args.loss_type, "nll"
        try:
            super().__init__(model, args=args, **kwargs)
        finally:
            args.loss_type = loss_type
        self.loss_spec = get_loss(loss_type)
        if args.disable_dropout:
            disable_dropout(self.model)
        elif args.needs_old_log_probs and has_dropout(self.model):
            logger.warning_once(DROPOUT_NOTE.format(loss_type=loss_type))
        self.reference = self._reference_mode()
        # a frozen copy of the initial model, only with `reference="copy"`
        self._ref_model = self._frozen_copy() if self.reference == "copy" and args.needs_reference else None
        if self._ref_model is not None:
            check_reference_vocabulary(self._ref_model, self.accelerator.unwrap_model(self.model))
        self._ref_table: ReferenceTable | None = (
            None  # with `reference="precompute"`, built when training starts
        )
        self._rollout_iterator = None  # the epoch iterator the pending rollout was drawn from
        self.run_state = RunState()  # rollout position, counters, reference fingerprint: saved in checkpoints
        self.schedule = self._make_schedule(0)  # updates per epoch known when training starts
        self._sums: dict[str, Tensor] = defaultdict(lambda: torch.zeros((), device=self.args.device))
        self._ratio_max = torch.full((), -math.inf, device=self.args.device)


    def _make_schedule(self, updates_per_epoch: int, max_steps: int = 0) -> RolloutSchedule:
        args = self.args
        return RolloutSchedule(
            mini_batches_per_rollout=args.mini_batches_per_rollout,
            rollout_epochs=args.rollout_epochs,
            sft_warmup_steps=args.sft_warmup_steps,
            updates_per_epoch=max(updates_per_epoch, 0),
            max_steps=max(max_steps, 0),
        )


    def _in_warmup(self) -> bool:
        return self.schedule.in_warmup(self.state.global_step)

    def _next_rollout(self, epoch_iterator: Any) -> list[list[dict[str, Any]]]:
        """Fetch the next rollout's mini-batches, attach the old policy's (and the reference's) log-probs,
        and return its optimizer steps in order (each mini-batch `rollout_epochs` times)."""
        args = self.args
        accumulation, epochs = args.gradient_accumulation_steps, args.rollout_epochs
        micro_batches = []
        for _ in range(self.schedule.to_fetch(self.state.global_step) * accumulation):
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
        needs_old = self._needs_old_log_probs() and not self._in_warmup()
        restored = self._restored_old_log_probs(mini_batches)  # after a resume inside this rollout
        for index, mini_batch in enumerate(mini_batches):
            for position, micro_batch in enumerate(mini_batch):
                if self.args.needs_reference:
                    micro_batch[REF_LOG_PROBS] = self._reference_log_probs(micro_batch)
                if restored is not None:
                    if restored[index][position] is not None:
                        micro_batch[OLD_LOG_PROBS] = restored[index][position]
                elif needs_old and args.old_policy == "fixed":
                    micro_batch[OLD_LOG_PROBS] = micro_batch[REF_LOG_PROBS]
                elif needs_old and (index > 0 or epochs > 1):
                    # With one pass, mini-batch 1 uses its own detached log-probs (ratio 1): no extra forward.
                    micro_batch[OLD_LOG_PROBS] = self._old_log_probs(micro_batch)
        self.run_state.rollout_index += 1
        return [mini_batch for _ in range(epochs) for mini_batch in mini_batches]

    def _needs_old_log_probs(self) -> bool:
        return OLD_LOG_PROBS in self.loss_spec.tensors

    def _old_log_probs(self, micro_batch: dict[str, Any]) -> Tensor:
        """The current model's per-token log-probs on one micro-batch: the old policy's, at rollout start."""
        return self._log_probs(self.model, micro_batch)

    def _log_probs(self, model: torch.nn.Module, micro_batch: dict[str, Any]) -> Tensor:
        """Per-token log-probs of `model` on one micro-batch: exactly the training forward's (`psft.core.logprobs`), without
        gradient, in eval mode.

        `self.model`, not the DDP wrapper: accelerate puts its autocast on the module's own forward (which DDP only
        calls), and a no-grad forward needs no gradient hooks or buffer broadcast; FSDP2 and ZeRO-3 gather
        parameters on the module itself, which `self.model` is for them."""
        inputs = self._prepare_inputs(micro_batch)
        inputs = {k: v for k, v in inputs.items() if k not in (OLD_LOG_PROBS, REF_LOG_PROBS)}
        with self.compute_loss_context_manager(), self._engine_forward_context():
            return label_log_probs(model, inputs)

    def _engine_forward_context(self) -> Any:
        """What DeepSpeed's engine wraps its module's forward in during training (`DeepSpeedEngine.forward`, 0.19:
        `autocast_if_enabled`, its `torch_autocast` setting); nothing for the other engines, whose wrappers sit
        on the module's own forward."""
        if self.is_deepspeed_enabled and self.model_wrapped is not self.model:
            from deepspeed.runtime.torch_autocast import autocast_if_enabled

            return autocast_if_enabled(self.model_wrapped)
        return contextlib.nullcontext()


    def _reference_source(self) -> ReferenceSource:
        """The live reference: the model with its adapter disabled, or the prepared frozen copy."""
        if self.reference == "adapter":
            return ReferenceSource(self.model, adapter=self.accelerator.unwrap_model(self.model))
        return ReferenceSource(self._prepared_reference_copy())

    def _reference_logits(self, inputs: dict[str, Any], vocab: int) -> Tensor:
        """The reference's next-token logits on one prepared micro-batch (in the training forward's autocast)."""
        with self.compute_loss_context_manager(), self._engine_forward_context():
            ref_logits = self._reference_source().logits(inputs)
        if ref_logits.shape[-1] != vocab:
            raise UserError(
                f"the reference's next-token distribution has {ref_logits.shape[-1]} entries, the model's {vocab}: "
                "set reference to 'copy' or 'adapter' so both share one vocabulary"
            )
        return ref_logits


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
        ref_log_probs = inputs.pop(REF_LOG_PROBS, None)
        if not self.model.training:
            # Evaluation loss is plain NLL for every objective, so eval_loss compares methods. TRL 1.16's
            # SFTTrainer.compute_loss picks DFT, label smoothing or NLL from args.loss_type: show it "nll".
            loss_type, self.args.loss_type = self.args.loss_type, "nll"
            try:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            finally:
                self.args.loss_type = loss_type
        if self.aux_loss_enabled:
            inputs["output_router_logits"] = True
        spec = get_loss("sft") if self._in_warmup() else self.loss_spec
        if LOGITS in spec.tensors:  # the whole distribution: a plain forward (full logits), chunked math
            outputs = _logits_outputs(model, inputs)
        else:
            outputs = policy_forward(model, inputs)  # the same call as the old and reference passes
        log_probs = outputs.log_probs
        mask = outputs.label_mask.to(log_probs.dtype)
        available = {
            OLD_LOG_PROBS: log_probs.detach() if old_log_probs is None else old_log_probs,
            REF_LOG_PROBS: ref_log_probs,
        }
        if LOGITS in spec.tensors:
            available[LOGITS] = outputs.logits
        if REF_LOGITS in spec.tensors:
            available[REF_LOGITS] = self._reference_logits(inputs, outputs.logits.shape[-1])
        tensors = {name: available[name] for name in spec.tensors}
        hparams = {name: getattr(self.args, name) for name in spec.hparams}
        out = spec.fn(log_probs, mask, **tensors, **hparams)
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
        if metrics:
            sums["metric_tokens"] += mask.sum().detach()
        for name, value in metrics.items():
            sums[name] += (value * mask).sum()
        if "ratio" in metrics and mask.any():
            self._ratio_max = torch.maximum(self._ratio_max, metrics["ratio"][mask.bool()].max())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the objective's metrics to the Trainer's logging-step entries (those with the training `loss`);
        other entries (evaluation, callbacks) pass through untouched."""
        if self.model.training and "loss" in logs and self._sums:
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
            metric_tokens = max(sums.get("metric_tokens", 0.0), 1.0)
            if "ratio" in sums:
                logs["clip_ratio/high"] = sums["clip_high"] / metric_tokens
                logs["clip_ratio/low"] = sums["clip_low"] / metric_tokens
                logs["ratio/mean"] = sums["ratio"] / metric_tokens
                logs["ratio/max"] = ratio_max.item()
                logs["approx_kl"] = sums["approx_kl"] / metric_tokens
                if logs["ratio/max"] > LARGE_RATIO:
                    logger.warning_once(LARGE_RATIO_NOTE)
            if "kl_ref" in sums:
                logs["kl_ref"] = sums["kl_ref"] / metric_tokens
            if self._needs_old_log_probs():
                logs["rollout"] = float(self.run_state.rollout_index)
            logs["nonfinite_skipped"] = float(self.run_state.nonfinite_skipped)
            self._sums.clear()
            self._ratio_max.fill_(-math.inf)
        super().log(logs, start_time)


DROPOUT_NOTE = (
    "disable_dropout=false with loss_type={loss_type!r} on a model with dropout: the old-policy pass runs without "
    "dropout (eval mode) and the training forward with it, so every ratio includes dropout noise (far from 1 even on "
    "an unchanged model) and the trust region clips noise. Set disable_dropout: true (the default)."
)
DROPOUT_ATTRIBUTES = ("attention_dropout", "attn_dropout", "dropout", "hidden_dropout", "activation_dropout")


def disable_dropout(model: torch.nn.Module) -> None:
    """Turn off every dropout of `model`: TRL's `disable_dropout_in_model` (each `torch.nn.Dropout`, LoRA's included),
    plus the float rates HF attention layers pass to their attention kernel (Llama's, Qwen's `attention_dropout`),
    which are no modules and so escape TRL's helper."""
    disable_dropout_in_model(model)
    for module in model.modules():
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


def has_dropout(model: torch.nn.Module) -> bool:
    """Whether any dropout of `model` (see `disable_dropout`) has a non-zero rate."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p > 0:
            return True
        if any(
            isinstance(getattr(module, n, None), float) and getattr(module, n) > 0 for n in DROPOUT_ATTRIBUTES
        ):
            return True
    return False


class _LogitsOutput:
    """What `compute_loss` reads from a fused-head output, built from full logits (`_logits_outputs`)."""

    def __init__(self, logits: Tensor, labels: Tensor, aux_loss: Any) -> None:
        self.logits, self.aux_loss = logits, aux_loss
        self.label_mask = labels != -100
        self.log_probs = label_log_probs_from_logits(logits, labels, self.label_mask)
        self.entropy = full_entropy(logits, self.label_mask)
        self.is_top1 = (logits.argmax(-1) == labels) & self.label_mask


def _logits_outputs(model: torch.nn.Module, inputs: dict[str, Any]) -> _LogitsOutput:
    """The training forward of objectives that need the whole next-token distribution (`asft`, `eaft`)."""
    logits, output = next_token_logits(model, inputs)
    return _LogitsOutput(logits, _shifted_labels(inputs).to(logits.device), getattr(output, "aux_loss", None))


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
