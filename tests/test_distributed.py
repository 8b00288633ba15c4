"""Two CPU processes (gloo) train exactly like one process with twice the per-device batch."""

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
