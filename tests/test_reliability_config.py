"""Bad configuration and data the trainer finds fail before training, with a message saying what to change."""

import json

import pytest
import yaml
from datasets import Dataset
from trainer_support import TOKENIZER, common_args, make_trainer, prompt_completion_data

from psft import PSFTConfig, PSFTTrainer
from psft.cli import main
from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(loss_type="ppo"), "unknown loss_type 'ppo'"),
        (dict(epsilon=0.0), "epsilon must be in"),
        (dict(epsilon_high=-0.1), "epsilon_high must be > 0"),
        (dict(mini_batches_per_rollout=0), "mini_batches_per_rollout must be >= 1"),
        (dict(max_nonfinite_steps=0), "max_nonfinite_steps must be >= 1"),
        (dict(per_device_train_batch_size=0), "per_device_train_batch_size must be >= 1"),
        (dict(gradient_accumulation_steps=0), "gradient_accumulation_steps must be >= 1"),
    ],
)
def test_bad_config_values_are_user_errors(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        PSFTConfig(**common_args(output_dir=str(tmp_path), **overrides))


def test_records_emptied_by_truncation_are_refused_or_skipped_with_a_count(tmp_path):
    rows = [{"prompt": "1+1=", "completion": "2"}] * 6 + [{"prompt": "x" * 40, "completion": "y"}] * 2
    data = Dataset.from_list(rows)
    with pytest.raises(
        UserError, match=r"2 of 8 records have no loss token left after truncation to max_length=16"
    ):
        make_trainer(tmp_path / "a", data=data, max_length=16, max_steps=1)
    trainer = make_trainer(tmp_path / "b", data=data, max_length=16, max_steps=1, skip_invalid_records=True)
    assert len(trainer.train_dataset) == 6


def test_invalid_python_records_are_refused_before_tokenisation(tmp_path):
    data = Dataset.from_list([{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": " "}])
    with pytest.raises(UserError, match=r"train dataset: record 1: field 'completion': is empty"):
        make_trainer(tmp_path, data=data, max_steps=1)


def test_a_dataset_smaller_than_one_batch_with_drop_last_is_an_error(tmp_path):
    trainer = make_trainer(tmp_path, data=prompt_completion_data(3), dataloader_drop_last=True, max_steps=-1)
    with pytest.raises(UserError, match="smaller than one batch"):
        trainer.train()


def no_generation_markers():
    tokenizer = make_char_tokenizer()
    tokenizer.chat_template = tokenizer.chat_template.replace("{% generation %}", "").replace(
        "{% endgeneration %}", ""
    )
    return tokenizer


def test_assistant_only_loss_needs_generation_markers_in_the_template(tmp_path):
    messages = Dataset.from_list(
        [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}] * 4
    )
    args = PSFTConfig(**common_args(output_dir=str(tmp_path), assistant_only_loss=True, max_steps=1))
    with pytest.raises(UserError, match=r"no \{% generation %\} markers"):
        PSFTTrainer(
            model=make_tiny_llama(TOKENIZER),
            args=args,
            train_dataset=messages,
            processing_class=no_generation_markers(),
        )


def test_cli_checks_the_chat_template_before_loading_the_model(tmp_path, capsys):
    model_dir = tmp_path / "tokenizer-only"  # no weights: reaching the model load would fail differently
    no_generation_markers().save_pretrained(model_dir)
    make_tiny_llama(TOKENIZER).config.save_pretrained(model_dir)  # a config passes the early path check
    data = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    data.write_text(json.dumps(row) + "\n")
    config = dict(
        model_name_or_path=str(model_dir),
        dataset_name=str(data),
        assistant_only_loss=True,
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        bf16=False,
    )
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no {% generation %} markers" in err.strip().splitlines()[-1]
    assert f"psft train: error: {model_dir}: " in err  # names the model (it said "model:" before)
