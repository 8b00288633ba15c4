"""`psft dpo`: preference optimisation after fine-tuning, with TRL's `DPOTrainer`.

    psft dpo --config examples/dpo-tiny.yaml --model_name_or_path runs/psft-pref                # one DPO run
    psft dpo --config examples/dpo-tiny.yaml --checkpoints sft=runs/sft-pref psft=runs/psft-pref  # the chain

Data are TRL's preference formats: `prompt`/`chosen`/`rejected`, plain text or conversational (or `chosen` and
`rejected` conversations that share their prompt), from the built-in `psft/pref`, a local JSONL/JSON/Parquet
file or a hub dataset; every record is checked first (the error names the file line or record, and the field).
Every field of TRL's `DPOConfig` works (`beta`, `loss_type`, ...). The chain (`run_dpo_stage`, `psft.stages.chain`)
runs the same DPO from several checkpoints and reports, before and after DPO, the preference accuracy and reward
margin on held-out pairs beside accuracy, entropy and drift.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset
from trl import DPOConfig

from psft.data.models import resolve_model_name
from psft.data.preference import load_preference_dataset
from psft.errors import UserError
from psft.stages.chain import StageEval, format_report, run_chain
from psft.stages.preference_eval import PreferenceProbe

# fields of the DPO run written to the report, so that runs can be compared
BUDGET_FIELDS = (
    "loss_type", "beta", "learning_rate", "lr_scheduler_type", "warmup_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "num_train_epochs", "max_steps", "max_length", "weight_decay", "seed",
)  # fmt: skip


@dataclass
class DPOArguments:
    """Data, chaining and evaluation settings of `psft dpo`."""

    dataset_name: str = field(
        default="psft/pref",
        metadata={"help": "Preference pairs: psft/pref, a .jsonl/.json/.parquet file or a hub dataset."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Held-out pairs (chain metrics; TRL's eval with eval_strategy)."}
    )
    checkpoints: list[str] | None = field(
        default=None,
        metadata={
            "help": "Chain mode: NAME=PATH pairs; each gets the same DPO run, evaluated before and after."
        },
    )
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "Model the checkpoints were fine-tuned from: the common reference of the preference metrics "
            "and of drift (none: reference-free log-prob margins, no drift)."
        },
    )
    eval_pairs: str | None = field(
        default=None, metadata={"help": "Held-out pairs of the chain; default: dataset_name's test split."}
    )
    eval_pairs_limit: int = field(default=100, metadata={"help": "Held-out pairs scored (the first ones)."})
    eval_in_domain: str = field(
        default="psft/pref-sft", metadata={"help": "In-domain test data (test split)."}
    )
    eval_out_of_domain: str = field(
        default="psft/general",
        metadata={"help": "Out-of-domain test data; psft/general = all general tasks."},
    )
    eval_limit: int = field(default=50, metadata={"help": "Test prompts per task in each evaluation set."})
    eval_max_new_tokens: int = field(default=64, metadata={"help": "Greedy decoding length for accuracy."})
    eval_batch_size: int = field(default=32, metadata={"help": "Prompts decoded (pairs scored) per batch."})
    default_checker: str = field(
        default="math", metadata={"help": "Checker of test rows without a `checker`."}
    )
    report_path: str | None = field(
        default=None, metadata={"help": "JSON report; default OUTPUT_DIR/dpo_report.json."}
    )


# ---------------------------------------------------------------- data


# ---------------------------------------------------------------- training


def run_dpo(
    model: str,
    train_dataset: Dataset | str,
    args: DPOConfig,
    peft_config: Any = None,
    callbacks: list | None = None,
    eval_dataset: Dataset | None = None,
) -> Any:
    """Train `model` (a directory, `psft/tiny-base` or a hub name) with DPO against itself as the frozen
    reference, save it (and its tokenizer) to `args.output_dir`, and return the `DPOTrainer`."""
    from trl import DPOTrainer

    if isinstance(train_dataset, str):
        train_dataset = load_preference_dataset(train_dataset, "train")
    trainer = DPOTrainer(
        model=resolve_model_name(model),
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    resume = args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):  # the last checkpoint in output_dir
        resume = True
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    return trainer


# ---------------------------------------------------------------- preference metrics


# ---------------------------------------------------------------- the chain


def _train_summary(log_history: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Loss, reward accuracy and margin (TRL's, on training batches) at the first and last logged steps."""
    logs = [h for h in log_history if "rewards/margins" in h]
    first, last = (logs[0], logs[-1]) if logs else ({}, {})
    out: dict[str, Any] = {
        "steps": log_history[-1].get("step") if log_history else 0,
        "seconds": round(seconds, 1),
    }
    for key, name in (
        ("loss", "loss"),
        ("rewards/accuracies", "reward_accuracy"),
        ("rewards/margins", "reward_margin"),
    ):
        out[f"{name}_first"], out[f"{name}_last"] = first.get(key), last.get(key)
    return out


def run_dpo_stage(
    checkpoints: dict[str, str],
    args: DPOConfig,
    train_data: str = "psft/pref",
    *,
    eval_pairs: str | None = None,
    eval_pairs_limit: int = 100,
    in_domain: str | list[str] = "psft/pref-sft",
    out_of_domain: str | list[str] = "psft/general",
    eval_limit: int = 50,
    max_new_tokens: int = 64,
    eval_batch_size: int = 32,
    default_checker: str = "math",
    base_model: str | None = None,
    report_path: str | Path | None = None,
    dataset_config: str | None = None,
    test_split: str = "test",
) -> dict[str, Any]:
    """The same DPO run (`args`, `train_data`) from each named checkpoint, into `args.output_dir/NAME`, with the
    preference metrics on held-out pairs (`eval_pairs`, default `train_data`'s `test_split`; `PreferenceProbe`)
    and accuracy, entropy and (with `base_model`) drift before and after it: `psft.stages.chain.run_chain`. Returns
    the report, also written as JSON to `report_path` (default `args.output_dir/dpo_report.json`)."""
    if eval_pairs is None and os.path.isfile(train_data):
        raise UserError(
            f"{train_data} is a file, with no test split: set eval_pairs to a file of held-out pairs "
            "(its own pairs would not be held out)"
        )
    train = load_preference_dataset(train_data, "train", dataset_config)
    pairs_name = eval_pairs or train_data
    held_out = load_preference_dataset(pairs_name, test_split, dataset_config)
    rows = list(held_out.select(range(min(eval_pairs_limit, len(held_out)))))

    def train_from(checkpoint: str, output_dir: str) -> Any:
        method_args = copy.copy(args)
        method_args.output_dir = output_dir
        return run_dpo(checkpoint, train, method_args)

    settings = {"train_data": train_data, "num_pairs": len(train), "eval_pairs": pairs_name}
    settings |= {k: getattr(args, k) for k in BUDGET_FIELDS}
    evaluation = StageEval(
        in_domain, out_of_domain, eval_limit, max_new_tokens, eval_batch_size, default_checker, base_model
    )
    probe = PreferenceProbe(rows, args, base_model, eval_batch_size)
    return run_chain(
        checkpoints,
        "dpo",
        train_from,
        args.output_dir,
        settings,
        evaluation,
        _train_summary,
        probe,
        report_path,
    )


def run_after_compare(
    checkpoints: dict[str, str],
    dpo: tuple[DPOArguments, DPOConfig],
    *,
    base_model: str,
    in_domain: str | list[str],
    out_of_domain: str | list[str],
    eval_limit: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """`psft compare --dpo`: the chain from every method's final model, with compare's base model and
    evaluation sets and the DPO YAML's data and fields; prints the table."""
    dpo_args, config = dpo
    report = run_dpo_stage(
        checkpoints, config, dpo_args.dataset_name, eval_pairs=dpo_args.eval_pairs,
        eval_pairs_limit=dpo_args.eval_pairs_limit, in_domain=in_domain, out_of_domain=out_of_domain,
        eval_limit=eval_limit, max_new_tokens=max_new_tokens, eval_batch_size=dpo_args.eval_batch_size,
        default_checker=dpo_args.default_checker, base_model=base_model, dataset_config=dpo_args.dataset_config,
        test_split=dpo_args.dataset_test_split,
    )  # fmt: skip
    print(format_report(report))
    return report


# ---------------------------------------------------------------- command line


