"""`psft rl`: an RL stage after fine-tuning, with TRL's `GRPOTrainer` and a verifiable reward.

    psft rl --config examples/rl-tiny.yaml --model_name_or_path runs/psft-tiny          # one RL run
    psft rl --config examples/rl-tiny.yaml --checkpoints sft=runs/sft-tiny psft=runs/psft-tiny   # chain

The reward is 1.0 when the row's answer checker (`checker` field: "math" = math-verify, "exact", the suite's
"json_answer"/"bracketed", ...; `default_checker` otherwise) accepts the completion, else 0.0, plus an
optional format reward (`format_reward_weight`, see `psft.stages.rewards`). `RLConfig` is TRL's `GRPOConfig` with
the paper's DAPO-style defaults. `run_rl_stage` runs the same RL budget from several fine-tuned checkpoints
and reports in-domain / out-of-domain accuracy, token entropy and drift before and after RL (`psft.stages.chain`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import GRPOConfig

from psft.data.models import resolve_model_name
from psft.data.sources import is_builtin
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.eval.records import load_records
from psft.stages.chain import StageEval, load_data_rows, run_chain
from psft.stages.rewards import checker_reward, format_reward

# fields of the RL budget written to the report, so that runs can be compared
BUDGET_FIELDS = (
    "loss_type", "epsilon", "epsilon_high", "beta", "scale_rewards", "num_generations", "temperature",
    "max_completion_length", "mask_truncated_completions", "per_device_train_batch_size",
    "gradient_accumulation_steps", "steps_per_generation", "num_iterations", "learning_rate", "max_steps",
    "num_train_epochs", "format_reward_weight", "default_checker", "seed",
)  # fmt: skip


@dataclass
class RLConfig(GRPOConfig):
    """TRL's `GRPOConfig` with DAPO-style defaults (the paper's RL stage) and the reward's settings.

    Defaults changed from GRPOConfig: `epsilon_high=0.28` (clip-higher) and `mask_truncated_completions=True`
    (DAPO's overlong filtering). Already TRL's defaults: `loss_type="dapo"` (token-level loss normalised over
    the whole accumulated batch) and `beta=0.0` (no KL, no reference model)."""

    epsilon_high: float | None = field(
        default=0.28, metadata={"help": "Upper clip 1 + epsilon_high (DAPO's clip-higher: 0.28)."}
    )
    mask_truncated_completions: bool = field(
        default=True,
        metadata={"help": "Leave completions cut at max_completion_length out of the loss (DAPO)."},
    )
    format_reward_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the answer-format reward (boxed / JSON / brackets); 0 leaves it out."},
    )
    default_checker: str = field(
        default="math", metadata={"help": "Answer checker for rows without a `checker` field."}
    )


@dataclass
class RLArguments:
    """Data, chaining and evaluation settings of `psft rl`."""

    dataset_name: str = field(
        default="psft/arith",
        metadata={
            "help": "Prompts with answers: psft/<task>, a .jsonl/.json/.parquet file or a hub dataset."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    checkpoints: list[str] | None = field(
        default=None,
        metadata={
            "help": "Chain mode: NAME=PATH pairs; each gets the same RL run, evaluated before and after."
        },
    )
    eval_in_domain: str = field(default="psft/arith", metadata={"help": "In-domain test data (test split)."})
    eval_out_of_domain: str = field(
        default="psft/general",
        metadata={"help": "Out-of-domain test data; psft/general = all general tasks."},
    )
    eval_limit: int = field(default=50, metadata={"help": "Test prompts per task in each evaluation set."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Greedy decoding length for accuracy."})
    eval_batch_size: int = field(default=32, metadata={"help": "Prompts decoded per batch."})
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Base model the checkpoints were fine-tuned from: drift is measured from it (none: no drift)."
        },
    )
    report_path: str | None = field(
        default=None, metadata={"help": "JSON report; default OUTPUT_DIR/rl_report.json."}
    )


def load_rl_dataset(name: str, split: str = "train", default_checker: str = "math") -> Dataset:
    """GRPO's dataset: `prompt` (text or chat messages) and the reward's columns `answer`, `checker`, `task`.

    Rows are any format `psft eval` reads; the reference is `answer`, or else the completion. Every checker
    named is checked to exist before any model loads."""
    source = load_data_rows(name, split) if is_builtin(name) else name
    records = load_records(source, split)
    if not records:
        raise UserError(f"{name}: no records")
    for checker in {r.checker or default_checker for r in records}:
        get_checker(checker)
    rows = [
        {"prompt": r.prompt, "answer": r.reference, "checker": r.checker or default_checker, "task": r.task}
        for r in records
    ]
    return Dataset.from_list(rows)


def run_rl(
    model: str,
    train_dataset: Dataset | str,
    args: RLConfig,
    peft_config: Any = None,
    callbacks: list | None = None,
) -> Any:
    """Train `model` (a directory, `psft/tiny-base` or a hub name) with GRPO on the checkers' reward, save
    it (and its tokenizer) to `args.output_dir`, and return the `GRPOTrainer`."""
    from trl import GRPOTrainer

    if isinstance(train_dataset, str):
        train_dataset = load_rl_dataset(train_dataset, "train", args.default_checker)
    reward_funcs = [checker_reward(args.default_checker)]
    if args.format_reward_weight:
        reward_funcs.append(format_reward(args.default_checker))
        if args.reward_weights is None:
            args = copy.copy(args)
            args.reward_weights = [1.0, args.format_reward_weight]
    trainer = GRPOTrainer(
        model=resolve_model_name(model),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=train_dataset,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.train()
    trainer.save_model(args.output_dir)
    return trainer


def _train_summary(log_history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Reward and own-sample entropy at the first and last logged RL steps, steps and wall time."""
    logs = [h for h in log_history if "reward" in h]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    return {
        "steps": log_history[-1].get("step") if log_history else 0,
        "seconds": round(seconds, 1),
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "sample_entropy_first": first.get("entropy"),
        "sample_entropy_last": last.get("entropy"),
    }


def run_rl_stage(
    checkpoints: dict[str, str],
    args: RLConfig,
    train_data: str = "psft/arith",
    *,
    in_domain: str | list[str] = "psft/arith",
    out_of_domain: str | list[str] = "psft/general",
    eval_limit: int = 50,
    max_new_tokens: int = 64,
    eval_batch_size: int = 32,
    base_model: str | None = None,
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """The same RL run (`args`, `train_data`) from each named checkpoint, into `args.output_dir/NAME`, with
    in-domain and out-of-domain accuracy, entropy and (with `base_model`) drift before and after it (each
    evaluation set: one data name or a list, test split, `eval_limit` prompts per task): `psft.stages.chain.run_chain`.
    Returns the report, also written as JSON to `report_path` (default `args.output_dir/rl_report.json`)."""
    train = load_rl_dataset(train_data, "train", args.default_checker)

    def train_from(checkpoint: str, output_dir: str) -> Any:
        method_args = copy.copy(args)
        method_args.output_dir = output_dir
        return run_rl(checkpoint, train, method_args)

    settings = {"train_data": train_data, "num_prompts": len(train)} | {
        k: getattr(args, k) for k in BUDGET_FIELDS
    }
    evaluation = StageEval(
        in_domain,
        out_of_domain,
        eval_limit,
        max_new_tokens,
        eval_batch_size,
        args.default_checker,
        base_model,
    )
    return run_chain(
        checkpoints, "rl", train_from, args.output_dir, settings, evaluation, _train_summary,
        report_path=report_path,
    )  # fmt: skip


