"""`psft train`: fine-tune with PSFT (or any registered loss) from a YAML config and/or flags.

    psft train --config run.yaml [--key value ...]

Fields are TRL's: `ScriptArguments` (dataset_name, splits), `PSFTConfig` (everything of `SFTConfig`
and `TrainingArguments`, plus the PSFT fields), `ModelConfig` (model_name_or_path, dtype, LoRA) and
`DatasetMixtureConfig` (a `datasets:` list in YAML). `dataset_name` may be a hub name or a local
.json/.jsonl/.parquet file; `model_name_or_path` may be a hub name, a local directory or `psft/tiny-base`.
"""

from __future__ import annotations

from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser, get_dataset, get_peft_config

from psft.config import PSFTConfig
from psft.data import check_chat_template, load_sft_dataset, validate_records
from psft.engines import check_engine
from psft.errors import UserError
from psft.tiny import resolve_model_name


def make_parser() -> TrlParser:
    """The argument parser of `psft train` (also reads `--config FILE.yaml`)."""
    return TrlParser((ScriptArguments, PSFTConfig, ModelConfig, DatasetMixtureConfig), prog="psft train")


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
    from psft.trainer import PSFTTrainer

    script_args, training_args, model_args, dataset_args = make_parser().parse_args_and_config(args=argv)
    if not model_args.model_name_or_path:
        raise UserError("no model: set model_name_or_path (hub name, local directory or psft/tiny-base)")
    train_dataset, eval_dataset = load_datasets(script_args, training_args, dataset_args)
    model_name = resolve_model_name(model_args.model_name_or_path)
    if training_args.assistant_only_loss:  # checked on the tokenizer alone, before the model loads
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            model_name, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
        )
        check_chat_template(tokenizer, model_args.model_name_or_path)

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
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):  # the last checkpoint in output_dir
        resume = True
    check_engine(trainer)  # says which engine runs, loudly if FSDP/DeepSpeed was asked for and DDP runs
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Saved the model to {training_args.output_dir}")
    trainer.accelerator.wait_for_everyone()  # no process leaves the group while another still talks in it
    trainer.end()
    return 0
