"""`psft rl`: an RL stage after fine-tuning, with TRL's `GRPOTrainer` and a verifiable reward.

    psft rl --config examples/rl-tiny.yaml --model_name_or_path runs/psft-tiny          # one RL run
    psft rl --config examples/rl-tiny.yaml --checkpoints sft=runs/sft-tiny psft=runs/psft-tiny   # chain

The reward is 1.0 when the row's answer checker (`checker` field: "math" = math-verify, "exact", the suite's
"json_answer"/"bracketed", ...; `default_checker` otherwise) accepts the completion, else 0.0, plus an
optional format reward (`format_reward_weight`, see `psft.rewards`). `RLConfig` is TRL's `GRPOConfig` with
the paper's DAPO-style defaults. `run_rl_stage` runs the same RL budget from several fine-tuned checkpoints
and reports in-domain / out-of-domain accuracy and token entropy before and after RL.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import GRPOConfig, ModelConfig, TrlParser, get_peft_config

from psft.args import parse_config_and_flags
from psft.data import BUILTIN_PREFIX, BUILTIN_TEST_SIZE
from psft.errors import UserError
from psft.eval.checkers import get_checker
from psft.eval.entropy import mean_token_entropy
from psft.eval.generate import evaluate_generation
from psft.eval.records import load_records, load_rows
from psft.rewards import checker_reward, completion_text, format_reward
from psft.tiny import resolve_model_name

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
    report_path: str | None = field(
        default=None, metadata={"help": "JSON report; default OUTPUT_DIR/rl_report.json."}
    )


def load_data_rows(name: str, split: str = "test", per_task: int | None = None) -> list[dict[str, Any]]:
    """Rows of `psft/<task>` (`psft/general`: every general task), a local file or a hub dataset; with
    `per_task`, the first `per_task` rows of each `task`."""
    from psft.tasks import GENERAL_TASKS, IN_DOMAIN_TRAIN_SIZE, generate, to_record

    if name.startswith(BUILTIN_PREFIX) and not Path(name).exists():
        task = name[len(BUILTIN_PREFIX) :]
        size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
        names = GENERAL_TASKS if task == "general" else (task,)
        rows = [
            to_record(ex, "prompt_completion") for t in names for ex in generate(t, size, seed=0, split=split)
        ]
    else:
        rows = load_rows(name, split)
    if per_task is None:
        return rows
    kept, seen = [], Counter()
    for row in rows:
        task = str(row.get("task") or "default")
        if seen[task] < per_task:
            kept.append(row)
            seen[task] += 1
    return kept


def load_rl_dataset(name: str, split: str = "train", default_checker: str = "math") -> Dataset:
    """GRPO's dataset: `prompt` (text or chat messages) and the reward's columns `answer`, `checker`, `task`.

    Rows are any format `psft eval` reads; the reference is `answer`, or else the completion. Every checker
    named is checked to exist before any model loads."""
    source = load_data_rows(name, split) if name.startswith(BUILTIN_PREFIX) else name
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


def _demonstration(row: dict[str, Any]) -> tuple[Any, str] | None:
    """(prompt, reference completion text) of a row, or None if it has no completion."""
    if row.get("messages"):
        messages = row["messages"]
        return (
            (messages[:-1], completion_text(messages[-1:]))
            if messages[-1].get("role") == "assistant"
            else None
        )
    if row.get("prompt") is not None and row.get("completion") is not None:
        return row["prompt"], completion_text(row["completion"])
    return None


def evaluate_model(
    model: Any,
    tokenizer: Any,
    sets: dict[str, list[dict[str, Any]]],
    *,
    default_checker: str = "math",
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Per evaluation set: greedy accuracy (avg@1, overall and per task) and the mean token entropy on the
    set's reference completions (`psft.eval.entropy`; None for sets without completions)."""
    out: dict[str, Any] = {}
    for name, rows in sets.items():
        result = evaluate_generation(
            model, tokenizer, rows, max_new_tokens=max_new_tokens, batch_size=batch_size,
            checker=default_checker, progress=False,
        )  # fmt: skip
        pairs = [d for d in map(_demonstration, rows) if d is not None]
        summary = result.summary()
        out[name] = {
            "accuracy": summary["overall"]["avg"],
            "accuracy_stderr": summary["overall"]["avg_stderr"],
            "num_prompts": summary["overall"]["num_prompts"],
            "tasks": {t: s["avg"] for t, s in sorted(summary["tasks"].items())},
            "entropy": mean_token_entropy(model, tokenizer, pairs) if pairs else None,
        }
    return out


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


def _names(names: str | list[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


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
    report_path: str | Path | None = None,
) -> dict[str, Any]:
    """The same RL run (`args`, `train_data`) from each named checkpoint, into `args.output_dir/NAME`, with
    in-domain and out-of-domain accuracy and entropy before and after it (each evaluation set: one data name
    or a list, test split, `eval_limit` prompts per task). Returns the report, also
    written as JSON to `report_path` (default `args.output_dir/rl_report.json`) after each checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not checkpoints:
        raise UserError("no checkpoints to run RL from")
    train = load_rl_dataset(train_data, "train", args.default_checker)
    sets = {
        group: [row for name in _names(names) for row in load_data_rows(name, "test", eval_limit)]
        for group, names in (("in_domain", in_domain), ("out_of_domain", out_of_domain))
    }
    path = Path(report_path or Path(args.output_dir) / "rl_report.json")
    evaluate = dict(
        default_checker=args.default_checker, max_new_tokens=max_new_tokens, batch_size=eval_batch_size
    )
    report: dict[str, Any] = {
        "rl": {"train_data": train_data, "num_prompts": len(train)} | {k: getattr(args, k) for k in BUDGET_FIELDS},
        "eval": {"in_domain": in_domain, "out_of_domain": out_of_domain, "per_task": eval_limit,
                 "max_new_tokens": max_new_tokens, "decoding": "greedy"},
        "methods": {},
    }  # fmt: skip
    for name, checkpoint in checkpoints.items():
        model_dir = resolve_model_name(checkpoint)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        before = evaluate_model(model, tokenizer, sets, **evaluate)
        del model
        method_args = copy.copy(args)
        method_args.output_dir = str(Path(args.output_dir) / name)
        start = time.perf_counter()
        trainer = run_rl(checkpoint, train, method_args)
        seconds = time.perf_counter() - start
        policy = trainer.accelerator.unwrap_model(trainer.model)
        after = evaluate_model(policy, trainer.processing_class, sets, **evaluate)
        report["methods"][name] = {
            "checkpoint": checkpoint, "rl_output_dir": method_args.output_dir, "before_rl": before,
            "after_rl": after, "rl_train": _train_summary(trainer.state.log_history, seconds),
        }  # fmt: skip
        del trainer, policy
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A plain-text table: accuracy and entropy per method, before and after RL."""
    lines = [f"{'method':<10} {'stage':<10} {'in-dom acc':>10} {'ood acc':>8} {'in-dom H':>9} {'ood H':>7}"]
    for name, result in report["methods"].items():
        for stage in ("before_rl", "after_rl"):
            m = result[stage]
            cells = [m["in_domain"]["accuracy"], m["out_of_domain"]["accuracy"]]
            cells += [m["in_domain"]["entropy"], m["out_of_domain"]["entropy"]]
            text = ["-" if c is None else f"{c:.3f}" for c in cells]
            lines.append(f"{name:<10} {stage:<10} {text[0]:>10} {text[1]:>8} {text[2]:>9} {text[3]:>7}")
    return "\n".join(lines)


def parse_checkpoints(pairs: list[str]) -> dict[str, str]:
    """`["sft=runs/sft", "psft=runs/psft"]` -> `{"sft": "runs/sft", "psft": "runs/psft"}`."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise UserError(f"checkpoints: expected NAME=PATH, got {pair!r}")
        if name in out:
            raise UserError(f"checkpoints: name {name!r} given twice")
        out[name] = path
    return out


def load_rl_config(path: str, output_dir: str) -> tuple[RLArguments, RLConfig]:
    """`psft rl` settings from a YAML file, with `output_dir` set: for `psft compare --rl`, checked before
    any fine-tuning runs."""
    rl_args, config, _ = parse_config_and_flags(make_parser(), ["--config", path, "--output_dir", output_dir])
    return rl_args, config


def make_parser() -> TrlParser:
    """The argument parser of `psft rl` (also reads `--config FILE.yaml`)."""
    return TrlParser((RLArguments, RLConfig, ModelConfig), prog="psft rl")


def main(argv: list[str]) -> int:
    """One GRPO run from `model_name_or_path`, or with `checkpoints` the chain with its report."""
    rl_args, config, model_args = parse_config_and_flags(make_parser(), argv)
    config.model_init_kwargs = dict(
        revision=model_args.model_revision,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    ) | (config.model_init_kwargs or {})
    if rl_args.checkpoints:
        report = run_rl_stage(
            parse_checkpoints(rl_args.checkpoints), config, rl_args.dataset_name,
            in_domain=rl_args.eval_in_domain, out_of_domain=rl_args.eval_out_of_domain,
            eval_limit=rl_args.eval_limit, max_new_tokens=rl_args.eval_max_new_tokens,
            eval_batch_size=rl_args.eval_batch_size, report_path=rl_args.report_path,
        )  # fmt: skip
        print(format_report(report))
        print(f"Wrote {rl_args.report_path or Path(config.output_dir) / 'rl_report.json'}")
        return 0
    if not model_args.model_name_or_path:
        raise UserError(
            "no model: set model_name_or_path (a directory, psft/tiny-base or a hub name) or checkpoints"
        )
    train = load_rl_dataset(rl_args.dataset_name, rl_args.dataset_train_split, config.default_checker)
    trainer = run_rl(model_args.model_name_or_path, train, config, peft_config=get_peft_config(model_args))
    trainer.accelerator.print(f"Saved the model to {config.output_dir}")
    return 0
