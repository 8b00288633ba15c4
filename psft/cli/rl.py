"""`psft rl`: one GRPO run from a model, or with --checkpoints the same RL run from each fine-tuned model and
its report (psft.stages.rl)."""

from __future__ import annotations

from pathlib import Path

from trl import ModelConfig, TrlParser, get_peft_config

from psft.cli.args import config_parser, parse_config_and_flags
from psft.cli.stage import parse_checkpoints, parse_stage_command
from psft.stages.chain import format_report
from psft.stages.rl import RLArguments, RLConfig, load_rl_dataset, run_rl, run_rl_stage


def load_rl_config(path: str, output_dir: str) -> tuple[RLArguments, RLConfig]:
    """`psft rl` settings from a YAML file, with `output_dir` set: for `psft compare --rl`, checked before
    any fine-tuning runs."""
    rl_args, config, _ = parse_config_and_flags(make_parser(), ["--config", path, "--output_dir", output_dir])
    return rl_args, config


USAGE = "psft rl --config rl.yaml [--key value ...]   (every YAML field is also a flag)"


def make_parser() -> TrlParser:
    """The argument parser of `psft rl` (also reads `--config FILE.yaml`)."""
    return config_parser((RLArguments, RLConfig, ModelConfig), prog="psft rl")


def main(argv: list[str]) -> int:
    """One GRPO run from `model_name_or_path`, or with `checkpoints` the chain with its report."""
    parsed = parse_stage_command(make_parser(), argv, USAGE)
    if parsed is None:  # help was printed
        return 0
    rl_args, config, model_args = parsed
    if rl_args.checkpoints:
        report = run_rl_stage(
            parse_checkpoints(rl_args.checkpoints), config, rl_args.dataset_name,
            in_domain=rl_args.eval_in_domain, out_of_domain=rl_args.eval_out_of_domain,
            eval_limit=rl_args.eval_limit, max_new_tokens=rl_args.eval_max_new_tokens,
            eval_batch_size=rl_args.eval_batch_size, base_model=rl_args.base_model,
            report_path=rl_args.report_path,
        )  # fmt: skip
        print(format_report(report))
        print(f"Wrote {rl_args.report_path or Path(config.output_dir) / 'rl_report.json'}")
        return 0
    train = load_rl_dataset(rl_args.dataset_name, rl_args.dataset_train_split, config.default_checker)
    trainer = run_rl(model_args.model_name_or_path, train, config, peft_config=get_peft_config(model_args))
    trainer.accelerator.print(f"Saved the model to {config.output_dir}")
    return 0
