"""`ReliabilityMixin`: the parts of `PSFTTrainer` that guard a run against bad data, crashes and non-finite numbers.

- Data: every raw record is validated before tokenisation (`psft.data.sft.validate_records`), and records that
  truncation to `max_length` leaves without a loss token (TRL drops them silently) are an error, or a logged
  skip with `skip_invalid_records`.
- Checkpoints are written atomically and carry the run state (`psft.core.run_state`: the pending old log-probs of an
  interrupted rollout, the non-finite counters, the reference fingerprint, the drift base), so a resumed run ends
  with the same parameters as an uninterrupted one (`psft.core.checkpoint`). A checkpoint to resume is checked first:
  whole (a completeness manifest), and saved by a run with the same meaning (objective, schedule, batch shape,
  world size, data).
- One run per output directory (`psft.lock`, stale locks of dead processes taken over), and SIGTERM (what Slurm
  and Kubernetes send before killing) writes a checkpoint at the next step boundary and stops the run with
  `psft.core.run_state.Preempted`, whose one line says how to resume.
- An optimizer step with a non-finite loss or gradient is skipped for real: gradients are dropped (`None`, so
  AdamW neither moves the weights nor advances its moments or step count) and the optimizer reports the step as
  skipped, so the LR scheduler does not advance either. Under DeepSpeed, whose engine steps inside `backward`,
  ZeRO's own overflow check skips the update and psft counts it. `max_nonfinite_steps` in a row stop the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from torch import Tensor
from transformers import TrainerCallback, TrainingArguments
from transformers.utils import logging

from psft._compat import can_mark_skipped, set_step_skipped
from psft.core.checkpoint import last_complete_checkpoint, resolve_resume, restore_old_log_probs
from psft.core.lock import acquire_lock, release_lock
from psft.core.run_meaning import check_run_meaning, data_fingerprint, run_meaning
from psft.core.run_state import Preempted, RunState
from psft.data.sft import check_chat_template
from psft.data.templates import resolve_template_path
from psft.errors import UserError

logger = logging.get_logger(__name__)


class ReliabilityMixin:
    """Mixed into `PSFTTrainer` before `SFTTrainer`; keeps the run's state in `self.run_state`."""

    run_state: RunState
    _staging_dir: str | None = None
    _meaning: dict[str, Any] | None = None  # `_run_meaning()`, computed once
    _step_loss_finite: Tensor | None = None
    _sigterm = False  # set by the SIGTERM handler, acted on at the next step boundary
    _preempted = False

    def __init__(self, model: Any, args: Any = None, **kwargs: Any):
        if args is not None:
            args.chat_template_path = resolve_template_path(args.chat_template_path)  # `psft/chatml` -> file
        if args is not None and args.assistant_only_loss:
            self._prepare_chat_template(model, args, kwargs)
        super().__init__(model, args=args, **kwargs)
        self.add_callback(_StopOnSigterm(self))

    @staticmethod
    def _prepare_chat_template(model: Any, args: Any, kwargs: dict[str, Any]) -> None:
        """Give TRL a tokenizer whose template has `{% generation %}` markers (`psft.data.templates`): loaded here as
        TRL would (`AutoProcessor` on the model's id, trl 1.16) when none is passed, then checked or patched."""
        config = getattr(model, "config", None)
        name = model if isinstance(model, str) else getattr(config, "_name_or_path", None)
        tokenizer = kwargs.get("processing_class")
        if tokenizer is None and name:
            from psft.data.models import load_processor

            tokenizer = load_processor(name, trust_remote_code=args.trust_remote_code)
            kwargs["processing_class"] = tokenizer
        if not hasattr(tokenizer, "apply_chat_template") or hasattr(tokenizer, "tokenizer"):
            return  # a processor (vision-language model): TRL checks its template itself
        check_chat_template(tokenizer, args.chat_template_path, name or "model")
        if args.chat_template_path is not None and os.path.isfile(args.chat_template_path):
            # applied (and patched if needed) above: TRL must not re-read the unpatched file over it
            args.chat_template_path = None


    # ------------------------------------------------------------------ numerics
    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()
        self._step_loss_finite = finite if self._step_loss_finite is None else self._step_loss_finite & finite
        return loss


    def _skip_if_nonfinite(self, model: torch.nn.Module, grad_norm: Any) -> None:
        run = self.run_state  # the counters are checkpointed: the limit holds across resumes
        finite = not self._step_was_nonfinite(model, grad_norm)
        run.count_step(finite)
        if finite:
            return
        step = self.state.global_step + 1
        logger.warning(
            f"step {step}: non-finite loss or gradient, optimizer step skipped "
            f"({run.nonfinite_in_a_row} in a row, {run.nonfinite_skipped} in all)"
        )
        if run.nonfinite_in_a_row >= self.args.max_nonfinite_steps:
            raise UserError(
                f"step {step}: {run.nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or "
                "gradient (max_nonfinite_steps); lower learning_rate, set max_grad_norm, check the data, or "
                "train in float32"
            )

    def _step_was_nonfinite(self, model: torch.nn.Module, grad_norm: Any) -> bool:
        """Whether this optimizer step had a non-finite loss or gradient on any process; if so, make sure the
        update is not applied (and the LR scheduler does not step)."""
        loss_finite, self._step_loss_finite = self._step_loss_finite, None
        if self.is_deepspeed_enabled:
            # DeepSpeed's engine steps inside `backward` of the last micro-batch, before this runs, and skips an
            # update whose gradient norm is not finite itself (ZeRO's overflow check: `optimizer.overflow`, read
            # by `step_was_skipped`, in fp32, bf16 and fp16; it also holds its LR scheduler back). Read its verdict.
            skipped = self.accelerator.optimizer_step_was_skipped
            if loss_finite is not None and self._any_process(~loss_finite) and not skipped:
                raise UserError(
                    f"step {self.state.global_step + 1}: the loss was not finite but DeepSpeed applied the update "
                    "(its gradient was finite); lower learning_rate, check the data, or train in float32"
                )
            return skipped
        optimizer = can_mark_skipped(self.optimizer) and self.optimizer
        if optimizer:
            set_step_skipped(optimizer, False)  # set by the previous skipped step, read by the LR scheduler step
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor; c10d collectives take plain tensors only
            grad_norm = grad_norm.full_tensor()
        ok = torch.isfinite(torch.as_tensor(grad_norm, dtype=torch.float32, device=self.args.device)).all()
        if loss_finite is not None:
            ok = ok & loss_finite.to(ok.device)
        if not self._any_process(~ok):
            return False
        for parameter in model.parameters():
            parameter.grad = None  # AdamW skips parameters without a gradient entirely
        if optimizer:
            set_step_skipped(optimizer, True)  # `accelerator.optimizer_step_was_skipped`: no LR scheduler step
        return True

    def _any_process(self, flag: Tensor) -> bool:
        """Whether `flag` (a boolean tensor) is true on any process."""
        bad = flag.float().to(self.args.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return bad.item() > 0

    # ------------------------------------------------------- checkpoint / resume
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """Claim the output directory, check the checkpoint is whole and means the same run, restore the run
        state from it, then train as the Trainer does; on SIGTERM, checkpoint at the next step and stop."""
        checkpoint = resume_from_checkpoint
        if checkpoint is True or isinstance(checkpoint, str):
            checkpoint = resolve_resume(self.args.output_dir, checkpoint)
        lock = self._acquire_lock()
        try:
            self.run_state = RunState()
            if isinstance(checkpoint, str):
                check_run_meaning(checkpoint, self._run_meaning())
                if self.args.rollout_epochs > 1:
                    raise UserError(
                        "resuming with rollout_epochs > 1 is not supported (the Trainer's data skip cannot find the "
                        "position inside a replayed rollout); restart the run or train with rollout_epochs=1"
                    )
                if not self.run_state.load(checkpoint, self.args.process_index):
                    logger.warning(
                        f"{checkpoint} has no PSFT run state: the rest of an interrupted rollout uses the resumed "
                        "model as its old policy, and the counters start from 0"
                    )
            with self._sigterm_handler():
                result = super().train(checkpoint, *args, **kwargs)
            if self._preempted:
                last = last_complete_checkpoint(self.args.output_dir)
                raise Preempted(
                    f"SIGTERM: stopped at step {self.state.global_step} after writing {last}; continue with "
                    "resume_from_checkpoint=True (psft train: --resume_from_checkpoint true)"
                )
            return result
        finally:
            if lock is not None:
                release_lock(lock)

    def _acquire_lock(self) -> str | None:
        """`psft.lock` in output_dir, taken by the main process; every process refuses together if it is held."""
        lock, problem = None, None
        if self.is_world_process_zero():
            try:
                lock = acquire_lock(self.args.output_dir)
            except UserError as err:
                problem = str(err)
        if self.accelerator.num_processes > 1:
            problem = broadcast_object_list([problem])[0]
        if problem is not None:
            raise UserError(problem)
        return lock

    @contextlib.contextmanager
    def _sigterm_handler(self) -> Iterator[None]:
        """Note SIGTERM (acted on at the next step boundary by `_StopOnSigterm`) while training; only the main
        thread can handle signals, elsewhere SIGTERM keeps its default."""
        self._sigterm = self._preempted = False
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def note(signum: int, frame: Any) -> None:
            self._sigterm = True

        previous = signal.signal(signal.SIGTERM, note)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _sigterm_anywhere(self) -> bool:
        """Whether any process got SIGTERM (a collective: every process calls it at every step boundary)."""
        if self.accelerator.num_processes == 1:
            return self._sigterm
        return self._any_process(torch.tensor(self._sigterm))

    def _run_meaning(self) -> dict[str, Any]:
        """What fixes this run's meaning (`psft.core.run_meaning.run_meaning`), the data hashed once per run."""
        if self._meaning is None:
            self._meaning = run_meaning(self.args, data_fingerprint(self.train_dataset))
        return self._meaning

    def _restored_old_log_probs(self, mini_batches: list[list[dict[str, Any]]]) -> list[list[Any]] | None:
        """For the first rollout after a resume inside a rollout: the saved old log-probs of its mini-batches."""
        state = self.run_state.take_resumed_rollout(self.state.global_step)
        if state is None:
            return None
        restored = restore_old_log_probs(mini_batches, state, state["source"])
        device = self.args.device
        return [[None if t is None else t.to(device) for t in row] for row in restored]


class _StopOnSigterm(TrainerCallback):
    """At every step boundary: if any process got SIGTERM, save a checkpoint now and stop training."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer._sigterm_anywhere():
            logger.warning(f"SIGTERM: saving a checkpoint at step {state.global_step} and stopping")
            self.trainer._preempted = True
            control.should_save = True
            control.should_training_stop = True


def check_honoured_options(args: TrainingArguments, compute_loss_func: Any = None) -> None:
    """Refuse options that `SFTTrainer` honours but `PSFTTrainer`'s loss does not: silently ignoring them
    would train something other than what was asked."""
    if compute_loss_func is not None:
        raise UserError(
            "compute_loss_func is not supported by PSFTTrainer: register the objective with "
            "psft.core.losses.register_loss and set loss_type to its name"
        )
    if args.label_smoothing_factor:
        raise UserError(
            f"label_smoothing_factor={args.label_smoothing_factor} is not supported by PSFTTrainer (its objectives "
            "are per-token log-prob functions); set it to 0"
        )
    if not args.average_tokens_across_devices:
        raise UserError(
            "average_tokens_across_devices=false is not supported: PSFTTrainer always divides by the loss tokens of "
            "the whole optimizer step across processes; remove the option"
        )
    if getattr(args, "use_liger_kernel", False):
        raise UserError(
            "use_liger_kernel=true is not supported: Liger replaces the model's forward and loss, and PSFTTrainer's "
            "objectives need the per-token log-probs of TRL's fused LM head; remove the option"
        )
    padding_free = getattr(args, "padding_free", False)
    if padding_free and getattr(args, "packing", False) and args.packing_strategy == "wrapped":
        raise UserError(
            "padding_free=true with packing_strategy=wrapped is not supported: wrapped rows cut sequences, so the "
            "flattened positions would restart mid-sequence; use packing_strategy bfd (padding-free already) or "
            "padding_free=false"
        )
    if padding_free and not args.packing and args.max_length is not None:
        raise UserError(  # TRL's SFTTrainer refuses it too, but only after the model has loaded
            f"padding_free=true without packing does not cut sequences to max_length={args.max_length}; set "
            "max_length: null, or packing: true (bfd packing is padding-free)"
        )
    for name, size in _model_parallel_sizes(args).items():
        if size > 1:
            raise UserError(
                f"parallelism_config {name}={size} is not supported: PSFTTrainer's per-token log-probs, old-policy "
                "table and token means need every process to hold whole sequences and the whole vocabulary; use "
                "data parallelism (DDP, FSDP or DeepSpeed ZeRO) with tp_size=cp_size=sp_size=1"
            )


def _model_parallel_sizes(args: TrainingArguments) -> dict[str, int]:
    """tp/cp/sp sizes asked for through `parallelism_config` (a field or, from `accelerate launch
    --parallelism_config_*`, the environment, which accelerate reads when `ACCELERATE_USE_PARALLELISM_CONFIG`)."""
    config = getattr(args, "parallelism_config", None)
    sizes = {}
    for name in ("tp_size", "cp_size", "sp_size"):
        value = config.get(name) if isinstance(config, dict) else getattr(config, name, None)
        if config is None and os.environ.get("ACCELERATE_USE_PARALLELISM_CONFIG", "").lower() == "true":
            value = os.environ.get(f"PARALLELISM_CONFIG_{name.upper()}")
        sizes[name] = int(value or 1)
    return sizes
