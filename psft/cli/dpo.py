"""`psft dpo`: one DPO run from a model, or with --checkpoints the same DPO run from each fine-tuned model and
its report (psft.stages.dpo)."""

from __future__ import annotations

from pathlib import Path

from trl import DPOConfig, ModelConfig, TrlParser, get_peft_config

from psft.cli.args import config_parser, parse_config_and_flags
from psft.cli.stage import parse_checkpoints, parse_stage_command
from psft.data.preference import load_preference_dataset
from psft.stages.chain import format_report
from psft.stages.dpo import DPOArguments, run_dpo, run_dpo_stage


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
