"""`psft train`: fine-tune with PSFT (or any registered loss) from a YAML config and/or flags.

    psft train --config run.yaml [--key value ...]

Fields are TRL's: `ScriptArguments` (dataset_name, splits), `PSFTConfig` (everything of `SFTConfig`
and `TrainingArguments`, plus the PSFT fields), `ModelConfig` (model_name_or_path, dtype, LoRA) and
`DatasetMixtureConfig` (a `datasets:` list in YAML). `dataset_name` may be a hub name or a local
.json/.jsonl/.parquet file; `model_name_or_path` may be a hub name, a local directory or `psft/tiny-base`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser, get_dataset, get_peft_config

from psft.cli.args import config_parser, parse_config_and_flags
from psft.cli.help import show_help
from psft.core.checkpoint import last_complete_checkpoint, resolve_resume
from psft.core.config import PSFTConfig
from psft.core.engines import check_engine
from psft.core.run_meaning import check_run_meaning, run_meaning
from psft.data.models import BUILTIN_MODEL_NAME, check_hub_model, load_tokenizer, resolve_model_name
from psft.data.sft import (
    BUILTIN_PREFIX,
    LOCAL_BUILDERS,
    check_chat_template,
    load_sft_dataset,
    validate_records,
)
from psft.errors import Interrupted, UserError

USAGE = "psft train --config run.yaml [--key value ...]   (every YAML field is also a flag)"


@dataclass
class RunArguments:
    """How `psft train` runs on this machine (not part of the training config)."""

    threads: int | None = field(
        default=None,
        metadata={
            "help": "CPU threads for torch. Unset: OMP_NUM_THREADS, else the CPUs not busy with other jobs."
        },
    )


def make_parser() -> TrlParser:
    """The argument parser of `psft train` (also reads `--config FILE.yaml`)."""
    return config_parser(
        (ScriptArguments, PSFTConfig, ModelConfig, DatasetMixtureConfig, RunArguments), prog="psft train"
    )


def parse_args(
    argv: list[str],
) -> tuple[ScriptArguments, PSFTConfig, ModelConfig, DatasetMixtureConfig, RunArguments]:
    """`psft train`'s flags over its `--config FILE.yaml` (`psft.cli.args.parse_config_and_flags`)."""
    return parse_config_and_flags(make_parser(), argv)


def _looks_local(name: str) -> bool:
    """A path rather than a hub id (`org/name`): absolute, relative with `.`/`~`, or with several `/`."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def check_before_loading(
    script_args: ScriptArguments, training_args: PSFTConfig, model_args: ModelConfig
) -> Any:
    """The cheap checks, before any data or weights load: output_dir, the checkpoint to resume, the data file,
    the model's config. Returns the checkpoint to resume (a path) or None."""
    out = training_args.output_dir
    if out and os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"output_dir {out} is a file, not a directory; choose another output_dir")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):  # the last checkpoint in output_dir
        resume = True
    elif isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        resume = None
    if resume is not None:
        resume = resolve_resume(out, resume)
        check_run_meaning(resume, run_meaning(training_args, data=None))  # the data is checked once tokenised
    name = script_args.dataset_name
    if name and not os.path.exists(name) and not name.startswith(BUILTIN_PREFIX):
        parent = os.path.dirname(name)  # `data/train` with a `data/` folder here is a path, not a hub name
        local = _looks_local(name) or (parent and os.path.isdir(parent))
        if local or os.path.splitext(name)[1].lower() in LOCAL_BUILDERS:
            raise UserError(
                f"dataset_name {name}: no such data file (looked for {os.path.abspath(name)}: a local .json, "
                ".jsonl or .parquet file)"
            )
    model = model_args.model_name_or_path
    if not model:
        raise UserError("no model: set model_name_or_path (hub name, local directory or psft/tiny-base)")
    path = os.path.expanduser(resolve_model_name(model))
    if os.path.exists(path) or _looks_local(model):
        if not os.path.isdir(path):
            raise UserError(
                f"model_name_or_path {model}: no such model directory (looked for {os.path.abspath(path)}; hub "
                f"names look like org/name, the built-in model is {BUILTIN_MODEL_NAME})"
            )
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise UserError(
                f"model_name_or_path {model}: {path} has no config.json, so it is not a model directory"
            )
        return resume
    # one small file: a wrong hub name fails here, not after the data has loaded; an unreachable hub in seconds
    check_hub_model(model, model_args.model_revision, training_args.trust_remote_code, "model_name_or_path")
    return resume


def load_datasets(
    script_args: ScriptArguments, training_args: PSFTConfig, dataset_args: DatasetMixtureConfig
):
    """(train, eval or None) from `datasets:` (a mixture) or `dataset_name` (hub name or local file)."""
    want_eval = training_args.eval_strategy != "no"
    if dataset_args.datasets:
        mixture = get_dataset(dataset_args)
        train = validate_records(
            mixture[script_args.dataset_train_split],
            "datasets",
            training_args.dataset_text_field,
            training_args.skip_invalid_records,
        )
        return train, (mixture[script_args.dataset_test_split] if want_eval else None)
    if not script_args.dataset_name:
        raise UserError("no data: set dataset_name (a hub name or a .jsonl/.json/.parquet file) or datasets")
    load = dict(
        config=script_args.dataset_config,
        streaming=script_args.dataset_streaming,
        text_field=training_args.dataset_text_field,
        skip_invalid=training_args.skip_invalid_records,
    )
    train = load_sft_dataset(script_args.dataset_name, split=script_args.dataset_train_split, **load)
    evaluation = None
    if want_eval:
        evaluation = load_sft_dataset(script_args.dataset_name, split=script_args.dataset_test_split, **load)
    return train, evaluation


def main(argv: list[str]) -> int:
    """Parse, load data and model, train, save the final model to `output_dir`."""
    from psft.core.guards import check_honoured_options
    from psft.core.threads import configure_threads
    from psft.core.trainer import PSFTTrainer

    if show_help(argv, make_parser(), USAGE):
        return 0
    script_args, training_args, model_args, dataset_args, run_args = parse_args(list(argv))
    configure_threads(run_args.threads)
    check_honoured_options(training_args)
    resume = check_before_loading(script_args, training_args, model_args)
    train_dataset, eval_dataset = load_datasets(script_args, training_args, dataset_args)
    model_name = resolve_model_name(model_args.model_name_or_path)
    if training_args.assistant_only_loss:  # checked on the tokenizer alone, before the model loads
        tokenizer = load_tokenizer(
            model_name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
        check_chat_template(tokenizer, training_args.chat_template_path, model_args.model_name_or_path)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    trainer = PSFTTrainer(
        model=model_name,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=get_peft_config(model_args),
    )
    check_engine(trainer)  # says which engine runs, loudly if FSDP/DeepSpeed was asked for and DDP runs
    start = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(training_args.output_dir)
    except KeyboardInterrupt:
        raise Interrupted(interrupted_note(training_args.output_dir)) from None
    trainer.save_state()  # trainer_state.json: every logged metric, step by step
    trainer.accelerator.print(summary_line(trainer, result.global_step, time.perf_counter() - start))
    trainer.accelerator.wait_for_everyone()  # no process leaves the group while another still talks in it
    trainer.end()
    return 0


def summary_line(trainer, steps: int, seconds: float) -> str:
    """One line at the end of a run: what was done and where it went."""
    logs = [entry for entry in trainer.state.log_history if "nll" in entry]
    nll = f", last logged NLL {logs[-1]['nll']:.3g}" if logs else ""
    out = trainer.args.output_dir
    return (
        f"psft train: {steps} optimizer steps in {seconds:.0f} s{nll}; model saved to {out}, "
        f"logged metrics in {out}/trainer_state.json"
    )


def interrupted_note(output_dir: str) -> str:
    """One line for a Ctrl-C'd run: the last complete checkpoint and how to resume from it."""
    last = last_complete_checkpoint(output_dir)
    if last is None:
        return f"no complete checkpoint in {output_dir}; the run starts over"
    return f"the last complete checkpoint is {last}; continue with --resume_from_checkpoint true"
