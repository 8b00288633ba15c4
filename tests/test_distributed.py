"""Two CPU processes (gloo) train exactly like one process with twice the per-device batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent


def run(tmp_path, name, nproc, **args):
    out = tmp_path / f"{name}.pt"
    flags = [str(x) for key, value in args.items() for x in (f"--{key}", value)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    command = (launcher if nproc > 1 else [sys.executable]) + [
        str(HERE / "distributed_run.py"),
        str(out),
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.parametrize("loss_type", ["psft", "sft"])
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, loss_type):
    common = dict(
        loss_type=loss_type,
        max_steps=4,
        mini_batches_per_rollout=2,
        learning_rate=0.01,
        gradient_accumulation_steps=2,
    )
    two = run(tmp_path, "two", 2, per_device_train_batch_size=4, **common)
    one = run(tmp_path, "one", 1, per_device_train_batch_size=8, **common)
    assert (two["world"], one["world"]) == (2, 1)
    moved = max((one["params"][k] - two["params"][k]).abs().max().item() for k in one["params"])
    assert moved < 2e-6
    for a, b in zip(two["logs"], one["logs"], strict=True):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5)
        assert a["num_tokens"] == b["num_tokens"]
        if loss_type == "psft":
            assert a["clip_ratio/high"] == pytest.approx(b["clip_ratio/high"], abs=1e-9)
            assert a["ratio/max"] == pytest.approx(b["ratio/max"], rel=1e-5)
    if loss_type == "psft":
        assert max(log["clip_ratio/high"] for log in one["logs"]) > 0  # the clipped path is covered


def test_shipped_cpu_accelerate_config_launches_two_processes(tmp_path):
    from psft.tiny import make_char_tokenizer, make_tiny_llama

    tokenizer = make_char_tokenizer()
    make_tiny_llama(tokenizer).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    rows = "".join(f'{{"prompt": "{i}+{i}=", "completion": "{2 * i}"}}\n' for i in range(32))
    (tmp_path / "d.jsonl").write_text(rows)
    config = HERE.parent / "examples" / "accelerate" / "cpu_ddp.yaml"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "-m",
        "psft.cli",
        "train",
        "--model_name_or_path",
        str(tmp_path / "model"),
        "--dataset_name",
        str(tmp_path / "d.jsonl"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--mini_batches_per_rollout",
        "2",
        "--bf16",
        "false",
        "--gradient_checkpointing",
        "false",
        "--use_cpu",
        "true",
        "--report_to",
        "none",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    # 32 records / (4 per process x 2 processes) = 4 steps an epoch: step 2 is half an epoch
    assert state["global_step"] == 2 and state["epoch"] == 0.5
