"""Evaluation during training: generation accuracy and drift every N steps, logged through the trainer.

Works with any `transformers.Trainer` subclass: attach it with ``EvalCallback(...).attach(trainer)`` (or
pass it in ``callbacks=[...]`` and call ``attach`` afterwards). Metrics go through ``trainer.log``, so they
land in ``trainer.state.log_history`` and every ``report_to`` integration (wandb, tensorboard) at the
current step. Without `attach`, metrics are appended to ``state.log_history`` only.

Drift needs the base model's statistics: give `drift_stats` (a file from `compute_reference_stats`), or
give `drift_texts` and the callback computes them from the model itself at the start of training, before
any update, so the base never has to be held beside the fine-tuned model. Attached to a `PSFTTrainer`, those
statistics go into its run state (every checkpoint): a resumed run measures drift against the run's starting
model, not the resumed one.

Runs on every process (each computes the same numbers); not meant for FSDP / ZeRO-3 sharded models.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.utils import logging

from psft.errors import UserError
from psft.eval.drift import compute_reference_stats, measure_drift
from psft.eval.generate import evaluate_generation
from psft.eval.records import EvalRecord, load_records

logger = logging.get_logger(__name__)


class EvalCallback(TrainerCallback):
    """Every `every_n_steps` (and at the start / end if asked): generation accuracy and drift."""

    def __init__(
        self,
        tokenizer,
        *,
        every_n_steps: int,
        data: str | list[dict[str, Any]] | None = None,
        drift_texts: list[str] | None = None,
        drift_stats: str | Path | None = None,
        eval_on_start: bool = True,
        eval_on_end: bool = True,
        generation_kwargs: dict[str, Any] | None = None,
        drift_kwargs: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
    ):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.tokenizer, self.every = tokenizer, every_n_steps
        self.records: list[EvalRecord] | None = load_records(data) if data is not None else None
        self.drift_texts, self.drift_stats = drift_texts, drift_stats
        self.eval_on_start, self.eval_on_end = eval_on_start, eval_on_end
        self.gen_kwargs = {"progress": False, **(generation_kwargs or {})}
        self.drift_kwargs = drift_kwargs or {}
        self.output_dir = Path(output_dir) if output_dir else None
        self.trainer = None
        self.seconds = 0.0  # wall time spent evaluating (so callers can report training time without it)
        self._last_step = -1
        self._tmp: tempfile.TemporaryDirectory | None = None

    def attach(self, trainer) -> EvalCallback:
        """Register with `trainer` (if not already) and log through its `log` method."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def evaluate(self, model, step: int) -> dict[str, float]:
        """The metrics at `step` (not logged)."""
        metrics: dict[str, float] = {}
        if self.records:
            path = self.output_dir / f"samples_step{step}.jsonl" if self.output_dir else None
            result = evaluate_generation(
                model, self.tokenizer, self.records, samples_path=path, **self.gen_kwargs
            )
            metrics.update(result.metrics())
        if self.drift_stats is not None:
            metrics.update(measure_drift(model, self.drift_stats, **self._drift_run_kwargs()).metrics())
        return metrics

    def _drift_run_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.drift_kwargs.items() if k in ("batch_size", "chunk_size")}

    def _run(self, args, state, control, model) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        start = time.perf_counter()
        metrics = self.evaluate(model, state.global_step)
        self.seconds += time.perf_counter() - start
        if not metrics:
            return
        if self.trainer is not None:
            # `Trainer.log` runs `CallbackHandler.on_log`, which clears `control.should_log` (transformers
            # 5.23-5.24): called from `on_step_end`, that would drop the training log the Trainer is about to
            # write at this same step. Keep the flag as the Trainer set it.
            should_log = control.should_log
            self.trainer.log(metrics)
            control.should_log = should_log
        else:
            state.log_history.append({**metrics, "step": state.global_step})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.drift_stats is None and self.drift_texts:
            self.drift_stats = self._drift_base(state, model)
        if self.eval_on_start:
            self._run(args, state, control, model)

    def _drift_base(self, state, model) -> Path:
        """The run's starting model's statistics: computed now on a fresh run, before any update; on a resumed
        run, the ones its checkpoint holds (`trainer.run_state.drift_base`), never the resumed model's."""
        if self.output_dir:
            path = self.output_dir / "drift_base_stats.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="psft-drift-")
            path = Path(self._tmp.name) / "base.safetensors"
        run_state = getattr(self.trainer, "run_state", None)
        saved = None if run_state is None else run_state.drift_base
        if saved is not None:
            path.write_bytes(saved)
        elif state.global_step == 0:
            compute_reference_stats(model, self.tokenizer, self.drift_texts, path, **self.drift_kwargs)
        elif (
            run_state is None and path.is_file()
        ):  # a trainer without a run state: the file of the run's start
            logger.warning(f"resumed at step {state.global_step}: drift is measured against {path}")
        else:
            raise UserError(
                f"resumed at step {state.global_step} without the drift base statistics of the run's start (the "
                "checkpoint holds none): pass drift_stats=FILE, or start the run afresh"
            )
        if run_state is not None:
            run_state.drift_base = path.read_bytes()  # saved in every checkpoint from now on
        return path

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0:
            self._run(args, state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.eval_on_end:
            self._run(args, state, control, model)
