"""Every engine we ship trains exactly like one process: DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 on 2 CPU processes
(gloo) at per-device batch b against 1 process at 2b, the shipped accelerate configs launched as a user would, exact
resume on FSDP2 and ZeRO-3, bf16 exactness on sharded engines, and DeepSpeed's non-finite step skip.

Each launch runs several trainings in the same processes (one start-up). Costs on a 2-core machine, 1 thread per
process: about 30-45 s per launch; the first DeepSpeed launch of a fresh machine also compiles DeepSpeed's CPU
shared-memory op once (1-3 min, cached in ~/.cache/torch_extensions). FSDP2 on CPU needs the test-only shim in
`tests/fsdp_on_cpu/` (accelerate enables FSDP only on GPU-like devices); nothing else is patched.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
SHIM = HERE / "fsdp_on_cpu"

# 64 records, 2 processes x 4 (or 1 x 8) x 2 accumulation = 16 a step: 4 steps, 2 rollouts of K = 2; lr high enough
# that the second mini-batch of each rollout clips
TRAIN = dict(max_steps=4, mini_batches_per_rollout=2, learning_rate=0.01, gradient_accumulation_steps=2)
MATCH = {"psft": dict(loss_type="psft", **TRAIN), "sft": dict(loss_type="sft", **TRAIN)}
# a model whose output head is its input embedding (SmolLM2, Qwen2.5 up to 3B, Llama 3.2): one tensor that gets
# two gradients, which every engine must sum and shard as one
TIED = {"psft_tied": dict(loss_type="psft", tied=True, **TRAIN)}
# precomputed reference log-probs, scored by each process on its shard
KL = {"sft_kl": dict(loss_type="sft_kl", reference="precompute", **TRAIN)}
# the reference precomputed on data that does not divide evenly across the processes (65 records, shards of 33
# and 32): every process must run the same number of forwards (FSDP2 and ZeRO-3 gather parameters in each)
UNEVEN = {"sft_kl_uneven": dict(loss_type="sft_kl", reference="precompute", records=65, **TRAIN)}
# the same reference from a frozen copy of the initial model, prepared like the trained one (sharded, ZeRO-3)
KL_COPY = {"sft_kl_copy": dict(loss_type="sft_kl", reference="copy", **TRAIN)}
# at learning rate 0 in bf16: PSFT's ratio exactly 1, the KL to the reference exactly 0
EXACT = {
    "bf16_psft": dict(
        loss_type="psft",
        bf16=True,
        learning_rate=0.0,
        max_steps=4,
        mini_batches_per_rollout=4,
        gradient_accumulation_steps=2,
    ),
    "bf16_sft_kl": dict(
        loss_type="sft_kl", reference="precompute", bf16=True, learning_rate=0.0, max_steps=2
    ),
}
# a NaN loss at step 2: DeepSpeed's engine steps inside backward, before psft's check runs; ZeRO's own overflow
# check must skip the update (and the LR scheduler), and psft counts it
NAN = {
    "nan": dict(
        TRAIN, gradient_accumulation_steps=1, lr_scheduler_type="linear", max_grad_norm=1.0, nan_steps=[2]
    )
}
LAUNCHES = {
    "ddp": {**MATCH, **KL, **UNEVEN, **TIED},
    "fsdp2": {**MATCH, **EXACT, **KL_COPY, **UNEVEN, **TIED},
    "zero2": {**MATCH, **NAN, **UNEVEN, **TIED},
    "zero3": {**MATCH, **NAN, **KL_COPY, **EXACT, **UNEVEN, **TIED},
}
PARAM_TOLERANCE = (
    2e-6  # measured: DDP 2e-7, FSDP2 2.6e-7, ZeRO-2 4.2e-7, ZeRO-3 9.1e-7 after 4 steps at lr 0.01
)


def environment(fsdp_shim: bool = True) -> dict:
    # the repository root too: launched processes import this checkout's psft, whatever is installed
    path = os.pathsep.join([str(SHIM), str(HERE), str(HERE.parent)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    env["PSFT_TEST_FSDP_ON_CPU"] = "1" if fsdp_shim else "0"
    return env


def launch(nproc: int, script: str, *args: str, cwd: Path, check: bool = True, env: dict | None = None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    command = (launcher if nproc > 1 else [sys.executable]) + [str(HERE / script), *args]
    result = subprocess.run(
        command, cwd=cwd, env=env or environment(), capture_output=True, text=True, timeout=600
    )
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def train(tmp_path: Path, name: str, nproc: int, engine: str, runs: dict, batch: int) -> dict:
    runs = {key: {**overrides, "per_device_train_batch_size": batch} for key, overrides in runs.items()}
    out = tmp_path / f"{name}.pt"
    launch(nproc, "distributed_run.py", str(out), json.dumps({"engine": engine, "runs": runs}), cwd=tmp_path)
    return torch.load(out)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: 1 process at twice the per-device batch."""
    return train(tmp_path_factory.mktemp("one"), "one", 1, "ddp", {**MATCH, **KL, **UNEVEN, **TIED}, batch=8)


def max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("engine", list(LAUNCHES))
def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, one_process, engine):
    two = train(tmp_path, engine, 2, engine, LAUNCHES[engine], batch=4)
    for name, record in two.items():
        assert record["world"] == 2
        # the engine really in use, never a silent DDP (FSDP2: every parameter a DTensor shard; ZeRO-3: every
        # parameter partitioned, none kept whole by stage3_param_persistence_threshold)
        assert record["engine"] == engine, (name, record["engine"])
    assert one_process["psft"]["engine"] == "single"
    for name in set(two) - set(EXACT) - set(NAN):
        a, b = two[name], one_process[name.removesuffix("_copy")]
        assert max_param_diff(a["params"], b["params"]) < PARAM_TOLERANCE, name
        assert len(a["logs"]) == len(b["logs"]) == 4
        for x, y in zip(a["logs"], b["logs"], strict=True):
            assert x["num_tokens"] == y["num_tokens"]
            assert x["nll"] == pytest.approx(y["nll"], rel=1e-5)
            for key in ("clip_ratio/high", "clip_ratio/low", "kl_ref"):
                if key in y:
                    assert x[key] == pytest.approx(y[key], abs=1e-7), (name, key)
            if "ratio/max" in y:
                assert x["ratio/max"] == pytest.approx(y["ratio/max"], rel=1e-5)
    if "psft" in two:
        assert max(log["clip_ratio/high"] for log in one_process["psft"]["logs"]) > 0  # clipping is exercised
    if "psft_tied" in two:  # the tied model really is tied: its head is no parameter of its own
        assert "lm_head.weight" in one_process["psft"]["params"]
        assert "lm_head.weight" not in one_process["psft_tied"]["params"]
    for name, records in (("sft_kl", 64), ("sft_kl_uneven", 65)):
        if name not in two:
            continue
        # each process scored its shard; the merged table equals the one process's, loss tokens only
        ours, theirs = two[name]["reference"], one_process[name]["reference"]
        assert ours.keys() == theirs.keys() and len(ours) == records
        assert max((ours[k] - theirs[k]).abs().max().item() for k in ours) < 1e-6
        assert max(log["kl_ref"] for log in one_process[name]["logs"]) > 0
    if "nan" in two:
        nan = two["nan"]
        assert nan["nonfinite_skipped"] == 1
        before, after = nan["snapshots"][2], nan["snapshots"][3]
        assert max_param_diff(before, after) == 0.0  # the NaN step changed nothing
        assert max_param_diff(after, nan["params"]) > 0  # the next one trains
        assert all(torch.isfinite(p).all() for p in nan["params"].values())
        assert nan["lr_scheduler_steps"] == 3  # 4 steps, one skipped
        assert [log["nonfinite_skipped"] for log in nan["logs"]] == [0, 0, 1, 1]
    for name in set(EXACT) & set(two):
        logs = two[name]["logs"]
        if name == "bf16_psft":
            assert [log["ratio/max"] for log in logs] == [1.0] * 4
            assert [log["clip_ratio/high"] for log in logs] == [0.0] * 4
        else:
            assert [log["kl_ref"] for log in logs] == [0.0] * 2


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["fsdp2", "zero3"])
def test_resume_after_a_kill_inside_a_rollout_is_exact(tmp_path, engine):
    """Rank 0 is killed while writing checkpoint 6; the run resumes from checkpoint 3, inside the first rollout
    of K = 4, and ends with the same parameters as the uninterrupted run."""
    launch(2, "resume_run.py", "full", "--engine", engine, cwd=tmp_path)
    killed = launch(
        2, "resume_run.py", "cut", "--engine", engine, "--kill-saving", "6", cwd=tmp_path, check=False
    )
    assert killed.returncode != 0
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-3"]
    launch(2, "resume_run.py", "cut", "--engine", engine, "--resume", cwd=tmp_path)
    full, resumed = torch.load(tmp_path / "full" / "final.pt"), torch.load(tmp_path / "cut" / "final.pt")
    assert max_param_diff(full, resumed) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp"])
def test_sigterm_inside_a_rollout_checkpoints_stops_and_resumes_exactly(tmp_path, engine):
    """SIGTERM reaches rank 0 only, during step 2 of the first rollout (K = 4): every process stops after writing
    checkpoint-2, saying how to resume; the resumed run ends with the uninterrupted run's parameters."""
    launch(2, "resume_run.py", "full", "--engine", engine, cwd=tmp_path)
    stopped = launch(
        2, "resume_run.py", "cut", "--engine", engine, "--sigterm-at", "1", cwd=tmp_path, check=False
    )
    assert stopped.returncode != 0
    line = next(x for x in stopped.stderr.splitlines() if "preempted: " in x)
    assert "SIGTERM: stopped at step 2 after writing " in line and "resume_from_checkpoint=True" in line, line
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-2"]
    for rank in (0, 1):  # each process saved the old log-probs of its 2 remaining mini-batches
        state = torch.load(tmp_path / "cut" / "checkpoint-2" / f"psft_run_state_{rank}.pt", weights_only=True)
        assert len(state["pending"]) == 2 and state["pending"][0][0][1] is not None
    assert not (tmp_path / "cut" / "psft.lock").exists()
    launch(2, "resume_run.py", "cut", "--engine", engine, "--resume", cwd=tmp_path)
    full, resumed = torch.load(tmp_path / "full" / "final.pt"), torch.load(tmp_path / "cut" / "final.pt")
    assert max_param_diff(full, resumed) == 0.0


def accelerate_launch(tmp_path: Path, config: str, *overrides: str, fsdp_shim: bool = True):
    """`accelerate launch --config_file examples/accelerate/CONFIG.yaml -m psft.cli train` on 2 CPU processes: the
    shipped config with CPU overrides on the command line, as a user would launch it."""
    from psft.data.tiny import make_char_tokenizer, make_tiny_llama

    if not (tmp_path / "model").is_dir():
        tokenizer = make_char_tokenizer()
        make_tiny_llama(tokenizer).save_pretrained(tmp_path / "model")
        tokenizer.save_pretrained(tmp_path / "model")
        rows = "".join(f'{{"prompt": "{i}+{i}=", "completion": "{2 * i}"}}\n' for i in range(32))
        (tmp_path / "d.jsonl").write_text(rows)
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(HERE.parent / "examples" / "accelerate" / f"{config}.yaml")]
    command += ["--num_processes", "2", *overrides, "-m", "psft.cli", "train"]
    command += ["--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "d.jsonl")]
    command += ["--output_dir", str(tmp_path / f"out-{config}"), "--max_steps", "2"]
    command += ["--per_device_train_batch_size", "4", "--mini_batches_per_rollout", "2"]
    command += ["--gradient_checkpointing", "false", "--use_cpu", "true", "--report_to", "none"]
    command += ["--save_strategy", "steps", "--save_steps", "2"]
    env = environment(fsdp_shim)
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((tmp_path / f"out-{config}" / "checkpoint-2" / "trainer_state.json").read_text())
    # 32 records / (4 per process x 2 processes) = 4 steps an epoch: step 2 is half an epoch
    assert state["global_step"] == 2 and state["epoch"] == 0.5
    return result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "overrides", "engine"),
    [
        ("cpu_ddp", [], "DDP"),
        # FSDP2 on CPU: the test shim; sharded checkpoints (see `engines.py` on FULL_STATE_DICT on CPU)
        ("fsdp2", ["--fsdp_state_dict_type", "SHARDED_STATE_DICT"], "FSDP2"),
        ("zero2", [], "DeepSpeed ZeRO-2"),
        ("zero3", [], "DeepSpeed ZeRO-3"),
    ],
)
def test_shipped_accelerate_configs_launch_psft_train_on_their_engine(tmp_path, config, overrides, engine):
    output = accelerate_launch(tmp_path, config, *overrides)
    assert f"Training with {engine} on 2 cpu process(es)" in output
    assert "was requested but this run trains with" not in output


@pytest.mark.slow
def test_fsdp_config_falling_back_to_ddp_is_said_loudly(tmp_path):
    """Without the test shim accelerate runs an FSDP config on CPU processes with DDP: psft train says so."""
    output = accelerate_launch(tmp_path, "fsdp2", fsdp_shim=False)
    assert "FSDP was requested but this run trains with DDP on 2 cpu process(es)" in output
    assert "Training with" not in output
