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
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import trl
from datasets import Dataset
from trl import DPOConfig, ModelConfig, TrlParser, get_peft_config
from trl.data_utils import extract_prompt
from trl.trainer.dpo_trainer import DataCollatorForPreference

from psft.cli.args import config_parser, parse_config_and_flags
from psft.core.logprobs import ensure_fused_head, label_log_probs
from psft.data.models import load_model, load_tokenizer, resolve_model_name
from psft.data.sources import BUILTIN_TEST_SIZE, check_builtin_task, read_dataset, resolve_source
from psft.data.validate import record_problem
from psft.errors import UserError
from psft.stages.chain import StageEval, format_report, parse_checkpoints, parse_stage_command, run_chain

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


def preference_problem(record: dict[str, Any]) -> tuple[str, str] | None:
    """`(field, what is wrong)` for one preference record (explicit prompt, or TRL's implicit one), or None.

    `chosen` and `rejected` are each checked as the completion of the prompt (`psft.data.validate.record_problem`):
    text, or chat messages with a non-empty assistant turn, in the prompt's format."""
    for name in ("chosen", "rejected"):
        if record.get(name) is None:
            return name, "missing"
        if not isinstance(record[name], (str, list)):
            return name, f"must be a string or a list of messages, got {type(record[name]).__name__}"
    if record.get("prompt") is None:  # implicit prompt: the conversations' common first turns
        if not (isinstance(record["chosen"], list) and isinstance(record["rejected"], list)):
            return "prompt", "missing (only conversational chosen/rejected may leave the prompt implicit)"
        for name in ("chosen", "rejected"):
            problem = record_problem({"messages": record[name]}, "conversational")
            if problem is not None:
                return name + problem[0].removeprefix("messages"), problem[1]
        record = extract_prompt(record)
        if not record["prompt"]:
            return "prompt", "missing, and chosen and rejected share no first turns to take it from"
    for name in ("chosen", "rejected"):
        problem = record_problem(
            {"prompt": record["prompt"], "completion": record[name]}, "prompt-completion"
        )
        if problem is not None:
            return name + problem[0].removeprefix("completion"), problem[1]
    if record["chosen"] == record["rejected"]:
        return "rejected", "identical to chosen: the pair states no preference"
    return None


def check_preference_jsonl(path: str) -> None:
    """Check every non-blank line of a JSONL preference file; the error names the first bad line and field."""
    count, first = 0, None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start})"
                ) from None
            if not line.strip():
                continue
            count += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{number}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            problem = preference_problem(record)
            if problem is not None:
                raise UserError(f"{path}:{number}: field {problem[0]!r}: {problem[1]}")
            kind = "conversational" if isinstance(record["chosen"], list) else "plain-text"
            first = first or kind
            if kind != first:
                raise UserError(f"{path}:{number}: a {kind} record in a {first} file (one format per file)")
    if count == 0:
        raise UserError(f"{path}: the file has no records")


def _validated(dataset: Dataset, source: str) -> Dataset:
    """Every record checked (the error names it), and implicit prompts made explicit with TRL's `extract_prompt`."""
    if len(dataset) == 0:
        raise UserError(f"{source}: the dataset is empty")
    missing = [c for c in ("chosen", "rejected") if c not in dataset.column_names]
    if missing:
        raise UserError(
            f"{source}: no {' or '.join(missing)} column (columns: {', '.join(dataset.column_names)}); "
            "preference data has prompt, chosen and rejected"
        )
    columns = [c for c in ("prompt", "chosen", "rejected") if c in dataset.column_names]
    for index, row in enumerate(dataset.select_columns(columns)):
        problem = preference_problem(row)
        if problem is not None:
            raise UserError(f"{source}: record {index}: field {problem[0]!r}: {problem[1]}")
    if "prompt" not in dataset.column_names:
        dataset = dataset.map(extract_prompt)
    return dataset


def load_preference_dataset(name: str, split: str = "train", config: str | None = None) -> Dataset:
    """Preference pairs from `psft/pref`, a local .jsonl/.json/.parquet file or a hub dataset, each record
    checked (`preference_problem`): a bad one is a `UserError` naming its line or index and field."""
    from psft.tasks import IN_DOMAIN_TRAIN_SIZE, PREFERENCE_TASKS, TASKS

    source = resolve_source(name)
    if source.kind == "builtin":
        hint = " (an SFT task)" if source.task in TASKS else ""
        task = check_builtin_task(name, list(PREFERENCE_TASKS), "built-in preference dataset", hint)
        if split not in ("train", "test"):
            raise UserError(f"{name}: no split {split!r}; built-in datasets have train and test")
        size = IN_DOMAIN_TRAIN_SIZE if split == "train" else BUILTIN_TEST_SIZE
        return Dataset.from_list(PREFERENCE_TASKS[task](size, seed=0, split=split))
    if source.kind == "file" and source.extension == ".jsonl":
        check_preference_jsonl(name)
    dataset = read_dataset(source, split, config)
    return _validated(dataset, name)


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


def tokenize_pairs(
    tokenizer: Any,
    rows: list[dict[str, Any]],
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> list[dict[str, list[int]]]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` of explicit-prompt records, made by TRL's own dataset
    preparation (`DPOTrainer._prepare_dataset`): chat template for conversational records, EOS appended to plain
    completions, the completion starting where prompt and prompt+completion diverge, and (with `keep_start`) the
    pairs whose prompt fills `max_length` left out, as TRL drops them.

    Contract with TRL 1.16 (a private method, called unbound): `_prepare_dataset(self, dataset,
    processing_class, args, dataset_name)` reads only `self._tokenizer` (its EOS) and `args.dataset_num_proc`,
    `args.max_length`, `args.truncation_mode`, and needs no trained model; checked here by its signature so that
    an upstream change fails loudly instead of scoring other tokens than DPO trains on."""
    from types import SimpleNamespace

    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
    from trl import DPOTrainer

    if not rows:
        return []
    prepare = DPOTrainer._prepare_dataset
    expected = ["self", "dataset", "processing_class", "args", "dataset_name"]
    if list(inspect.signature(prepare).parameters) != expected:
        raise RuntimeError(
            "psft's preference metrics rely on DPOTrainer._prepare_dataset of TRL 1.16 (arguments "
            f"{expected}); this TRL ({trl.__version__}) changed it: install trl==1.16"
        )
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode=truncation_mode)
    columns = [c for c in ("prompt", "chosen", "rejected", "tools", "chat_template_kwargs") if c in rows[0]]
    dataset = Dataset.from_list([{c: row[c] for c in columns} for row in rows])
    bars = is_progress_bar_enabled()
    disable_progress_bar()  # a progress bar per scoring would drown the chain's lines
    try:
        prepared = prepare(SimpleNamespace(_tokenizer=tokenizer), dataset, tokenizer, args, "held-out")
    finally:
        if bars:
            enable_progress_bar()
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    return [{k: row[k] for k in keys} for row in prepared.select_columns(list(keys))]


def tokenize_pair(tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """`tokenize_pairs` of one explicit-prompt record, untruncated."""
    return tokenize_pairs(tokenizer, [row])[0]


@torch.no_grad()
def pair_log_probs(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    max_length: int | None = 1024,
    truncation_mode: str = "keep_start",
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs `(chosen, rejected)` of each pair's completion tokens under `model`: DPO's sequence
    log-probs, tokenised, truncated and padded as `DPOTrainer` does (pairs whose prompt fills `max_length`
    are left out, as TRL drops them)."""
    pairs = tokenize_pairs(tokenizer, rows, max_length, truncation_mode)
    if not pairs:
        raise UserError("preference metrics: no pair left to score (every prompt fills max_length)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = DataCollatorForPreference(
        pad_token_id=pad_id, max_length=max_length, truncation_mode=truncation_mode
    )
    ensure_fused_head(model)  # a model fresh from from_pretrained has no fused head yet
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(pairs[start : start + batch_size]).items()}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            logps = label_log_probs(
                model,
                {
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"],
                    "labels": labels,
                },
            ).sum(-1)
            c, r = logps.cpu().chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    beta: float,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> dict[str, float]:
    """DPO's implicit reward r = beta * (log pi - log pi_ref) of each completion: `accuracy`, the share of pairs
    with r(chosen) > r(rejected) (ties count as wrong, as in TRL), and `reward_margin`, the mean of
    r(chosen) - r(rejected). Without a reference, log pi_ref = 0 (the log-probs themselves)."""
    margin = chosen - rejected
    if ref_chosen is not None:
        margin = margin - (ref_chosen - ref_rejected)
    margin = beta * margin.double()
    return {"accuracy": float((margin > 0).double().mean()), "reward_margin": float(margin.mean())}


class PreferenceProbe:
    """The chain's preference metrics on held-out pairs, for `psft.stages.chain.run_chain`.

    Against the base model (a reference common to every start, so before-DPO numbers compare): `accuracy`,
    `reward_margin`; reference-free: `logp_margin` (mean log pi(chosen) - log pi(rejected)); after DPO also
    against the DPO reference, the start (`accuracy_vs_start`, `reward_margin_vs_start`: what DPO optimised,
    TRL's `rewards/accuracies` and `rewards/margins`). The start's log-probs are kept between its two calls."""

    def __init__(
        self, rows: list[dict[str, Any]], args: DPOConfig, base_model: str | None = None, batch_size: int = 32
    ):
        self.rows, self.beta, self.base_model = rows, args.beta, base_model
        self.score = dict(
            max_length=args.max_length, truncation_mode=args.truncation_mode, batch_size=batch_size
        )
        self.base: tuple[torch.Tensor, torch.Tensor] | None = None
        if base_model is not None:
            model = load_model(base_model)
            self.base = pair_log_probs(model, load_tokenizer(base_model), rows, **self.score)
        self.starts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, model: Any, tokenizer: Any, name: str, phase: str) -> dict[str, Any]:
        chosen, rejected = pair_log_probs(model, tokenizer, self.rows, **self.score)
        out = {"num_pairs": len(chosen), "reference": self.base_model, "beta": self.beta}
        out |= preference_metrics(chosen, rejected, self.beta, *(self.base or ()))
        out["logp_margin"] = float((chosen - rejected).double().mean())
        if phase == "before":
            self.starts[name] = (chosen, rejected)
        else:
            vs_start = preference_metrics(chosen, rejected, self.beta, *self.starts.pop(name))
            out |= {f"{k}_vs_start": v for k, v in vs_start.items()}
        return {"preference": out}


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


def load_dpo_config(path: str, output_dir: str) -> tuple[DPOArguments, DPOConfig]:
    """`psft dpo` settings from a YAML file, with `output_dir` set: for `psft compare --dpo`, checked before
    any fine-tuning runs."""
    dpo_args, config, _ = parse_config_and_flags(
        make_parser(), ["--config", path, "--output_dir", output_dir]
    )
    return dpo_args, config


USAGE = "psft dpo --config dpo.yaml [--key value ...]   (every YAML field is also a flag)"


def make_parser() -> TrlParser:
    """The argument parser of `psft dpo` (also reads `--config FILE.yaml`)."""
    return config_parser((DPOArguments, DPOConfig, ModelConfig), prog="psft dpo")


def main(argv: list[str]) -> int:
    """One DPO run from `model_name_or_path`, or with `checkpoints` the chain with its report."""
    parsed = parse_stage_command(make_parser(), argv, USAGE)
    if parsed is None:  # help was printed
        return 0
    dpo_args, config, model_args = parsed
    if dpo_args.checkpoints:
        report = run_dpo_stage(
            parse_checkpoints(dpo_args.checkpoints), config, dpo_args.dataset_name,
            eval_pairs=dpo_args.eval_pairs, eval_pairs_limit=dpo_args.eval_pairs_limit,
            in_domain=dpo_args.eval_in_domain, out_of_domain=dpo_args.eval_out_of_domain,
            eval_limit=dpo_args.eval_limit, max_new_tokens=dpo_args.eval_max_new_tokens,
            eval_batch_size=dpo_args.eval_batch_size, default_checker=dpo_args.default_checker,
            base_model=dpo_args.base_model, report_path=dpo_args.report_path,
            dataset_config=dpo_args.dataset_config, test_split=dpo_args.dataset_test_split,
        )  # fmt: skip
        print(format_report(report))
        print(f"Wrote {dpo_args.report_path or Path(config.output_dir) / 'dpo_report.json'}")
        return 0
    train = load_preference_dataset(
        dpo_args.dataset_name, dpo_args.dataset_train_split, dpo_args.dataset_config
    )
    evaluation = None
    if config.eval_strategy != "no":
        evaluation = load_preference_dataset(
            dpo_args.dataset_name, dpo_args.dataset_test_split, dpo_args.dataset_config
        )
    trainer = run_dpo(
        model_args.model_name_or_path,
        train,
        config,
        peft_config=get_peft_config(model_args),
        eval_dataset=evaluation,
    )
    trainer.accelerator.print(f"Saved the model to {config.output_dir}")
    return 0
