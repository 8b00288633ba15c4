"""`psft train` end to end: YAML config plus flags, local data files, built-in data names, clear errors."""

import json
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file

from psft.cli import main
from psft.data.sft import load_sft_dataset, write_jsonl


def write_config(tmp_path, model_dir, data, **overrides):
    config = dict(
        model_name_or_path=str(model_dir),
        dataset_name=str(data),
        loss_type="psft",
        mini_batches_per_rollout=2,
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=2,
        output_dir=str(tmp_path / "out"),
        save_strategy="no",
        report_to="none",
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        disable_tqdm=True,
    )
    config.update(overrides)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_from_yaml_and_flags_on_a_local_jsonl_saves_a_trained_model(tmp_path, tiny_model_dir):
    rows = [
        {"messages": [{"role": "user", "content": f"{i}*2"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(16)
    ]
    data = write_jsonl(rows, tmp_path / "train.jsonl")
    config = write_config(tmp_path, tiny_model_dir, data, assistant_only_loss=True)
    # a flag overrides the YAML
    assert main(["train", "--config", str(config), "--max_steps", "3"]) == 0
    out = tmp_path / "out"
    before = load_file(tiny_model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert max((before[k] - after[k]).abs().max().item() for k in before) > 1e-3
    state = (
        json.loads((out / "trainer_state.json").read_text())
        if (out / "trainer_state.json").exists()
        else None
    )
    assert state is None or state["global_step"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such data file"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": \n', "train.jsonl:2: invalid JSON"),
        ("", "has no records"),
        ('{"question": "a", "answer": "b"}\n', "match no known format"),
    ],
)
def test_bad_data_is_a_one_line_error_before_training(tmp_path, tiny_model_dir, capsys, content, message):
    data = tmp_path / "train.jsonl"
    if content is not None:
        data.write_text(content)
    config = write_config(tmp_path, tiny_model_dir, data)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("psft train: error: ")
    assert message in last and "train.jsonl" in last
    assert not (tmp_path / "out").exists()


def test_unknown_loss_type_is_a_one_line_error(tmp_path, tiny_model_dir, capsys):
    config = write_config(tmp_path, tiny_model_dir, tmp_path / "x.jsonl", loss_type="ppo")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown loss_type 'ppo'" in err.strip().splitlines()[-1]


def test_builtin_suite_datasets_load_by_name():
    train = load_sft_dataset("psft/arith")
    test = load_sft_dataset("psft/arith", split="test")
    assert "messages" in train.column_names and len(train) > len(test) > 0
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in test}


def test_console_script_lists_the_commands():
    result = subprocess.run(
        [sys.executable, "-m", "psft.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "train" in result.stdout
