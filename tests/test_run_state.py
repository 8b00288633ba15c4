"""The run state lives in the checkpoint: the pure rollout schedule, the run state's round trip, the output_dir
lock, and each value a resume must not lose (non-finite counters, the reference table, the drift base), plus the
reference lookup under left padding."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reliability_numerics import NaNAt
from trainer_support import TOKENIZER, make_trainer, prompt_completion_data
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from psft.core.lock import LOCK_FILE, acquire_lock, release_lock
from psft.core.reference import ReferenceTable
from psft.core.run_state import RunState
from psft.core.schedule import RolloutSchedule
from psft.errors import UserError


# ---------------------------------------------------------------------------------------------- schedule
def positions(schedule: RolloutSchedule, steps: int) -> list[tuple[int, int, int]]:
    """(rollout start, mini-batch, pass) of every step."""
    return [(p.rollout_start, p.mini_batch, p.epoch) for p in map(schedule.position, range(steps))]


def test_schedule_refreshes_every_k_steps_from_each_epochs_start():
    # K = 3, 7 steps an epoch: rollouts [0,3) [3,6) [6,7) | [7,10) [10,13) [13,14)
    schedule = RolloutSchedule(mini_batches_per_rollout=3, updates_per_epoch=7, max_steps=14)
    refreshes = [step for step in range(14) if schedule.position(step).refresh]
    assert refreshes == [0, 3, 6, 7, 10, 13]
    assert [schedule.position(s).length for s in (0, 5, 6, 7, 13)] == [3, 3, 1, 3, 1]
    assert [schedule.position(s).mini_batch for s in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    # a resume re-enters its rollout: fetch the rest of it
    assert [schedule.to_fetch(s) for s in (0, 1, 2, 3, 4, 6, 8)] == [3, 2, 1, 3, 2, 1, 2]


def test_schedule_cuts_at_the_end_of_training_and_of_the_warmup():
    # warm-up 3 steps (rollouts of at most K = 2 inside it), then K = 2 from step 3; training ends at 8
    schedule = RolloutSchedule(mini_batches_per_rollout=2, sft_warmup_steps=3, max_steps=8)
    assert positions(schedule, 8) == [
        (0, 0, 0),
        (0, 1, 0),
        (2, 0, 0),
        (3, 0, 0),
        (3, 1, 0),
        (5, 0, 0),
        (5, 1, 0),
        (7, 0, 0),
    ]
    assert [schedule.position(s).warmup for s in (0, 2, 3)] == [True, True, False]
    assert schedule.position(7).length == 1 and schedule.to_fetch(7) == 1


def test_schedule_with_rollout_epochs_replays_each_mini_batch():
    # K = 2, E = 2: steps 0-3 are mini-batches 0,1,0,1 of the rollout from step 0; an epoch of 3 mini-batches of
    # data is 6 steps: the rollout at step 4 has one mini-batch, replayed at step 5
    schedule = RolloutSchedule(mini_batches_per_rollout=2, rollout_epochs=2, updates_per_epoch=6)
    assert positions(schedule, 8) == [
        (0, 0, 0),
        (0, 1, 0),
        (0, 0, 1),
        (0, 1, 1),
        (4, 0, 0),
        (4, 0, 1),
        (6, 0, 0),
        (6, 1, 0),
    ]
    assert [s for s in range(8) if schedule.position(s).refresh] == [0, 4, 6]
    # training ends at step 5: the rollout at step 4 holds ceil((5 - 4) / 2) = 1 mini-batch
    assert RolloutSchedule(2, rollout_epochs=2, max_steps=5).position(4).length == 1


def test_schedule_with_k_1_refreshes_every_step_and_rejects_bad_values():
    assert all(RolloutSchedule(1).position(s).refresh for s in range(5))
    with pytest.raises(ValueError):
        RolloutSchedule(0)
    with pytest.raises(ValueError):
        RolloutSchedule(2).position(-1)


# ------------------------------------------------------------------------------------------- run state
def test_run_state_round_trip_keeps_everything_a_resume_reads(tmp_path):
    micro = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])}
    old = torch.tensor([[-0.5, -1.5]])
    state = RunState(rollout_index=3, nonfinite_in_a_row=2, nonfinite_skipped=5, drift_base=b"\x00stats")
    state.pending = [[{**micro, "old_log_probs": old}]]
    state.reference = {"table": "abc", "model": "m", "data": "d"}
    state.save(str(tmp_path), process_index=1, global_step=7)
    loaded = RunState()
    assert not loaded.load(str(tmp_path), 0)  # another process's file is not this one's
    assert loaded.load(str(tmp_path), 1)
    assert (loaded.nonfinite_in_a_row, loaded.nonfinite_skipped) == (2, 5)
    assert loaded.rollout_index == 2  # the interrupted rollout is counted again when re-fetched
    assert loaded.drift_base == b"\x00stats" and loaded.reference == state.reference
    assert loaded.take_resumed_rollout(6) is None  # only at the checkpoint's own step
    loaded.load(str(tmp_path), 1)
    resumed = loaded.take_resumed_rollout(7)
    assert torch.equal(resumed["pending"][0][0][1], old) and loaded.take_resumed_rollout(7) is None


# ------------------------------------------------------------------------------------------------ lock
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_ones(tmp_path):
    path = acquire_lock(str(tmp_path))
    with pytest.raises(UserError, match=r"is in use by another run \(pid \d+ on .*delete .*psft.lock") as err:
        acquire_lock(str(tmp_path))  # this very process still holds it
    assert "\n" not in str(err.value)
    release_lock(path)
    assert not os.path.exists(path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(f'{{"pid": {dead.pid}, "host": "{os.uname().nodename}"}}')
    assert acquire_lock(str(tmp_path)) == path  # stale: its process is gone
    release_lock(path)


def test_a_second_run_on_a_busy_output_dir_is_refused_before_training(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / LOCK_FILE).write_text(
            f'{{"pid": {sleeper.pid}, "host": "{os.uname().nodename}"}}'
        )
        trainer = make_trainer(tmp_path, max_steps=1)
        with pytest.raises(UserError, match=f"pid {sleeper.pid}"):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    trainer.train()  # the holder died: its lock is stale, the run goes ahead and releases it
    assert trainer.state.global_step == 1 and not (tmp_path / "out" / LOCK_FILE).exists()


# -------------------------------------------------------------------------------- what a resume keeps
def test_nonfinite_counters_are_restored_so_the_limit_holds_across_a_resume(tmp_path, monkeypatch):
    """NaN at steps 2, 3 and 4 with max_nonfinite_steps=3: the uninterrupted run stops at step 5; so does a run
    saved at step 4 (two in a row so far) and resumed, which without the counters would go on."""
    monkeypatch.setattr(NaNAt, "nan_steps", (2, 3, 4))
    run = dict(trainer_cls=NaNAt, max_nonfinite_steps=3, save_strategy="steps", save_steps=4, logging_steps=1)
    first = make_trainer(tmp_path, max_steps=4, **run)
    first.train()
    assert (first.run_state.nonfinite_in_a_row, first.run_state.nonfinite_skipped) == (2, 2)
    resumed = make_trainer(tmp_path, max_steps=8, **run)
    with pytest.raises(UserError, match="step 5: 3 optimizer steps in a row"):
        resumed.train(resume_from_checkpoint=True)
    assert resumed.run_state.nonfinite_skipped == 3


KL_RUN = dict(loss_type="sft_kl", reference="precompute", save_strategy="steps", save_steps=2)


def test_resume_with_another_runs_reference_table_is_refused_in_one_line(tmp_path):
    make_trainer(tmp_path, max_steps=2, **KL_RUN).train()
    table = tmp_path / "out" / "reference_log_probs.pt"
    saved = torch.load(tmp_path / "out" / "checkpoint-2" / "psft_run_state_0.pt", weights_only=True)
    assert saved["reference"]["table"] == ReferenceTable.load(table).fingerprint()
    mine = table.read_bytes()
    # run B starts afresh in the same output_dir on other data: it writes its own table there
    make_trainer(tmp_path / "b", data=prompt_completion_data(32), max_steps=1, **KL_RUN).train()
    shutil.copy(tmp_path / "b" / "out" / "reference_log_probs.pt", table)
    resumed = make_trainer(tmp_path, max_steps=4, **KL_RUN)
    with pytest.raises(UserError, match="is not this run's reference table") as err:
        resumed.train(resume_from_checkpoint=True)
    assert "\n" not in str(err.value)
    table.write_bytes(mine)  # the run's own table back: the resume goes ahead
    make_trainer(tmp_path, max_steps=4, **KL_RUN).train(resume_from_checkpoint=True)


def test_drift_is_measured_against_the_runs_start_after_a_resume(tmp_path):
    from psft.eval import EvalCallback

    def run(max_steps, resume):
        callback = EvalCallback(
            TOKENIZER,
            every_n_steps=2,
            drift_texts=["some held-out text", "and another line"],
            eval_on_end=False,
            output_dir=tmp_path / "evals",
        )
        trainer = make_trainer(
            tmp_path, max_steps=max_steps, learning_rate=3e-2, save_strategy="steps", save_steps=2
        )
        callback.attach(trainer).trainer.train(resume_from_checkpoint=resume)
        return trainer, [log for log in trainer.state.log_history if "drift/kl" in log]

    first, logs = run(2, None)
    base = first.run_state.drift_base
    assert base and abs(logs[0]["drift/kl"]) < 1e-5  # measured at the start: the model is its base
    resumed, logs = run(4, True)
    assert resumed.run_state.drift_base == base  # the checkpoint's, not recomputed from the resumed model
    assert (tmp_path / "evals" / "drift_base_stats.safetensors").read_bytes() == base
    # the evaluations before the checkpoint are kept and none is repeated at the step it resumes from; the one
    # after it measures the resumed model against the start, so the drift shows
    assert [log["step"] for log in logs] == [0, 2, 4]
    assert logs[-1]["drift/kl"] > 1e-4


# ---------------------------------------------------------------------------------------- left padding
def left_padded(batch: dict) -> dict:
    """The same rows padded on the left: every row's real tokens rolled to the end."""
    out = {key: value.clone() for key, value in batch.items()}
    for row in range(batch["input_ids"].shape[0]):
        shift = int((batch["attention_mask"][row] == 0).sum())
        for key in out:
            out[key][row] = torch.roll(batch[key][row], shift)
    return out


class LeftPadding(DataCollatorForLanguageModeling):
    def torch_call(self, examples):
        return left_padded(super().torch_call(examples))


def test_reference_rows_are_keyed_by_unpadded_tokens_so_left_padding_finds_them():
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    batch = {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "labels": torch.tensor([[-100, 6, 7, 8], [-100, 6, -100, -100]]),
    }
    table = ReferenceTable()
    table.add(batch, torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]))
    left = left_padded(batch)
    assert left["input_ids"][1].tolist() == [0, 0, 5, 6] and left["labels"][1].tolist() == [
        -100,
        -100,
        -100,
        6,
    ]
    assert table.lookup(left).tolist() == [[-1.0, -2.0, -3.0], [0.0, 0.0, -4.0]]
    assert table.lookup(batch).tolist() == [[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]


def test_sft_kl_with_a_left_padding_collator_finds_every_reference_row(tmp_path):
    """At learning rate 0 the KL to the precomputed reference is 0 up to the padding's rounding."""
    trainer = make_trainer(
        tmp_path, loss_type="sft_kl", reference="precompute", learning_rate=0.0, max_steps=3
    )
    trainer.data_collator = LeftPadding(pad_token_id=TOKENIZER.pad_token_id)
    trainer.train()
    logs = [log["kl_ref"] for log in trainer.state.log_history if "kl_ref" in log]
    assert len(logs) == 3 and max(abs(x) for x in logs) < 1e-5


# ------------------------------------------------------------------------------------ SIGTERM, psft train
def test_psft_train_on_sigterm_checkpoints_at_the_step_boundary_and_says_how_to_resume(
    tmp_path, tiny_model_dir
):
    """A real `psft train` process sent SIGTERM (from outside, as a scheduler would) once checkpoint-2 exists: it
    writes a checkpoint at the next step boundary and exits with one line naming it (the library test in
    test_reliability_resume.py shows that checkpoint is off the save_steps grid; 15-35 s)."""
    import time

    from test_cli_errors import base_config, config_argv

    from psft.core.checkpoint import checkpoint_problem

    config = base_config(tmp_path, tiny_model_dir, max_steps=100_000, save_strategy="steps", save_steps=2)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PSFT_DEBUG", None)
    argv = [sys.executable, "-m", "psft.cli", *config_argv(tmp_path, config)]
    process = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    out = tmp_path / "out"
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint-2").is_dir() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert (out / "checkpoint-2").is_dir(), "no checkpoint was written"
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    last = last[last.find("psft train: interrupted") :]
    assert last.startswith("psft train: interrupted: the last complete checkpoint is "), last
    assert last.endswith("continue with --resume_from_checkpoint true"), last
    named = last.split("the last complete checkpoint is ")[1].split(";")[0]
    state = json.loads((Path(named) / "trainer_state.json").read_text())
    assert checkpoint_problem(named) is None and state["global_step"] > 2  # where the run stopped
    assert named == str(sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1])
    assert not (out / "psft.lock").exists()
