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

Attached to a `PSFTTrainer`, the evaluations made so far (per-prompt results, time spent, the last step
evaluated) also go into its run state after each evaluation (`state_dict`): a run resumed from a checkpoint
keeps them and does not evaluate again at the step it resumes from; its results are the whole run's.

Every evaluation also keeps its per-prompt results in `prompt_results` (prompt id, task, correct; and, for
the `heldout` demonstrations, the NLL per completion token of the reference answer), so that intervals can
resample prompts (`psft.experiments.stats`); `log_steps` gives a log-spaced schedule (0, 2, 4, 8, ... plus the end) that
sees early forgetting with few evaluations.

Runs on every process (each computes the same numbers); not meant for FSDP / ZeRO-3 sharded models.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.utils import logging

from psft.errors import UserError
from psft.eval.drift import compute_reference_stats, measure_drift
from psft.eval.generate import evaluate_generation
from psft.eval.records import EvalRecord, load_records, render_prompt, render_text


def log_steps(total: int, first: int = 2, factor: float = 2.0) -> list[int]:
    """Log-spaced evaluation steps of a run of `total` steps: 0, first, first*factor, ... below `total`, and
    `total` itself: dense early, where forgetting starts, sparse late."""
    if first < 1 or factor <= 1:
        raise ValueError("need first >= 1 and factor > 1")
    steps, step = [0], float(first)
    while round(step) < total:
        if round(step) > steps[-1]:
            steps.append(round(step))
        step *= factor
    return steps + [total] if total > 0 else steps


def prompt_id(task: str, index: int) -> str:
    """The id of the `index`-th evaluation prompt of `task`: the same across runs scored on the same records,
    which is what pairs methods prompt by prompt."""
    return f"{task}:{index}"


def _ids(tasks: list[str]) -> list[str]:
    """Prompt ids of records in order: the i-th record of a task is `task:i`."""
    seen: dict[str, int] = {}
    ids = []
    for task in tasks:
        ids.append(prompt_id(task, seen.get(task, 0)))
        seen[task] = seen.get(task, 0) + 1
    return ids


@torch.no_grad()
def heldout_nll(model, tokenizer, rows: list[dict[str, Any]], batch_size: int = 32) -> list[float]:
    """Per row, the mean negative log-likelihood per token (nats) of its reference answer (the last assistant
    message, or `completion`) given its prompt, as the training forward scores labels (`psft.core.logprobs`): how
    well the model fits demonstrations it was not trained on."""
    from psft.core.logprobs import ensure_fused_head, label_log_probs

    ensure_fused_head(model)
    pairs = []
    for row in rows:
        full = render_text(tokenizer, row)
        if isinstance(row.get("messages"), list):
            prompt = render_prompt(tokenizer, row["messages"][:-1])
        else:
            prompt = render_prompt(tokenizer, row["prompt"])
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        pairs.append((ids, min(start, len(ids) - 1)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: list[float] = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b : b + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for i, (ids, start) in enumerate(chunk):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
            labels[i, start : len(ids)] = input_ids[i, start : len(ids)]
        device = model.device
        logp = label_log_probs(
            model,
            {
                "input_ids": input_ids.to(device),
                "attention_mask": mask.to(device),
                "labels": labels.to(device),
            },
        ).cpu()
        counts = (labels[:, 1:] != -100).sum(-1).clamp(min=1)
        out.extend((-logp.sum(-1) / counts).tolist())
    return out


logger = logging.get_logger(__name__)


class EvalCallback(TrainerCallback):
    """At `eval_steps` (or every `every_n_steps`, and at the start / end if asked): generation accuracy, drift
    and the held-out NLL of `heldout` demonstrations; per-prompt results in `prompt_results`."""

    def __init__(
        self,
        tokenizer,
        *,
        every_n_steps: int | None = None,
        eval_steps: Sequence[int] | None = None,
        data: str | list[dict[str, Any]] | None = None,
        heldout: list[dict[str, Any]] | None = None,
        drift_texts: list[str] | None = None,
        drift_stats: str | Path | None = None,
        eval_on_start: bool = True,
        eval_on_end: bool = True,
        generation_kwargs: dict[str, Any] | None = None,
        drift_kwargs: dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
    ):
        if eval_steps is None and (every_n_steps is None or every_n_steps < 1):
            raise ValueError("give eval_steps, or every_n_steps >= 1")
        self.tokenizer, self.every = tokenizer, every_n_steps
        self.eval_steps = set(eval_steps) if eval_steps is not None else None
        self.heldout = heldout
        self.prompt_results: list[dict[str, Any]] = []  # one entry per evaluation, see `evaluate`
        self.records: list[EvalRecord] | None = load_records(data) if data is not None else None
        self.drift_texts, self.drift_stats = drift_texts, drift_stats
        self.eval_on_start, self.eval_on_end = eval_on_start, eval_on_end
        self.gen_kwargs = {"progress": False, **(generation_kwargs or {})}
        self.drift_kwargs = drift_kwargs or {}
        self.output_dir = Path(output_dir) if output_dir else None
        self.trainer = None
        self.seconds = 0.0  # wall time spent evaluating (so callers can report training time without it)
        self.cpu_seconds = 0.0  # the same in CPU time of this process (robust to a busy machine)
        self._last_step = -1
        self._tmp: tempfile.TemporaryDirectory | None = None

    STATE_KEY = "evaluation"  # this callback's entry in `RunState.callbacks`

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs of the evaluations made so far (plain values, saved in the run state)."""
        return {
            "prompt_results": self.prompt_results,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "last_step": self._last_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompt_results = list(state["prompt_results"])
        self.seconds, self.cpu_seconds = float(state["seconds"]), float(state["cpu_seconds"])
        self._last_step = int(state["last_step"])

    def _run_state(self):
        return getattr(self.trainer, "run_state", None)

    def attach(self, trainer) -> EvalCallback:
        """Register with `trainer` (if not already) and log through its `log` method."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def evaluate(self, model, step: int) -> dict[str, float]:
        """The metrics at `step` (not logged). Appends to `prompt_results` one entry `{"step", "id", "task",
        "correct", "heldout_id", "heldout_nll"}`: per generation prompt its id, task and share of correct
        samples; per held-out demonstration its id and NLL per token (`heldout/nll` is their mean)."""
        metrics: dict[str, float] = {}
        entry: dict[str, Any] = {"step": step}
        if self.records:
            path = self.output_dir / f"samples_step{step}.jsonl" if self.output_dir else None
            result = evaluate_generation(
                model, self.tokenizer, self.records, samples_path=path, **self.gen_kwargs
            )
            metrics.update(result.metrics())
            correct: dict[int, list[bool]] = {}
            for sample in result.samples:
                correct.setdefault(sample["index"], []).append(bool(sample["correct"]))
            entry["id"] = _ids([r.task for r in self.records])
            entry["task"] = [r.task for r in self.records]
            entry["correct"] = [sum(correct[i]) / len(correct[i]) for i in range(len(self.records))]
        if self.heldout:
            nll = heldout_nll(model, self.tokenizer, self.heldout)
            entry["heldout_id"] = _ids([str(row.get("task") or "default") for row in self.heldout])
            entry["heldout_nll"] = nll
            metrics["heldout/nll"] = sum(nll) / len(nll)
        self.prompt_results.append(entry)
        if self.drift_stats is not None:
            metrics.update(measure_drift(model, self.drift_stats, **self._drift_run_kwargs()).metrics())
        return metrics

    def _drift_run_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.drift_kwargs.items() if k in ("batch_size", "chunk_size")}

    def _run(self, args, state, control, model) -> None:
        if state.global_step == self._last_step:
            return
        self._last_step = state.global_step
        start, cpu = time.perf_counter(), time.process_time()
        metrics = self.evaluate(model, state.global_step)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu
        run_state = self._run_state()
        if run_state is not None:  # the next checkpoint holds the evaluations so far
            run_state.callbacks[self.STATE_KEY] = self.state_dict()
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
        run_state = self._run_state()
        saved = None if run_state is None else run_state.callbacks.get(self.STATE_KEY)
        if saved is not None:  # resumed from a checkpoint: the run's start was evaluated before it
            self.load_state_dict(saved)
        elif self.eval_on_start:
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
        due = state.global_step in self.eval_steps if self.eval_steps is not None else False
        if due or (self.every and state.global_step % self.every == 0):
            self._run(args, state, control, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.eval_on_end:
            self._run(args, state, control, model)
