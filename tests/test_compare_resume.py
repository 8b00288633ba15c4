"""`checkpoint_every`: a compare run interrupted midway resumes from its last checkpoint and ends with the record
an uninterrupted run writes (evaluations, training curves, per-prompt results), not a record of its last piece."""

import json
import os
import socket

import pytest
import torch

import psft.experiments.runner as runner
from psft.core.checkpoint import write_manifest
from psft.core.run_state import RUN_STATE, saved_callback_state
from psft.errors import UserError
from psft.experiments.plan import CompareConfig
from psft.experiments.runner import compare
from psft.experiments.store import read_prompts


def _config(out, **fields_) -> CompareConfig:
    settings = dict(
        # K = 4 with a checkpoint every 2 steps: the interruption falls inside a rollout, so the resumed run
        # needs the pending old log-probs of the run state as well as the evaluations and the clock
        methods=[{"name": "psft", "loss_type": "psft", "mini_batches_per_rollout": 4, "learning_rate": 1e-3}],
        training={
            "per_device_train_batch_size": 4,
            "max_steps": 6,
            "logging_steps": 1,
            "max_length": 128,
            "assistant_only_loss": True,
        },
        eval_size=2,
        ood_eval_size=1,
        eval_every=2,
        max_new_tokens=8,
        checkpoint_every=2,
        output_dir=str(out),
    )
    return CompareConfig(**{**settings, **fields_})


def _die_at(monkeypatch, step: int) -> None:
    """Make the next run raise at the end of optimizer step `step` (after that step's evaluation)."""
    real = runner.progress_callback

    def dying(*args):
        callback = real(*args)
        on_step_end = callback.on_step_end

        def end(args, state, control, **kwargs):
            on_step_end(args, state, control, **kwargs)
            if state.global_step == step:
                raise RuntimeError("killed")

        callback.on_step_end = end
        return callback

    monkeypatch.setattr(runner, "progress_callback", dying)


def test_an_interrupted_run_resumes_from_its_checkpoint_and_records_the_whole_run(
    tmp_path, monkeypatch, capsys
):
    whole = compare(_config(tmp_path / "whole"))["runs"][0]

    out = tmp_path / "cut"
    with monkeypatch.context() as patch:
        _die_at(patch, 3)  # after the checkpoint of step 2, before that of step 4
        with pytest.raises(RuntimeError, match="killed"):
            compare(_config(out))
    run_dir = out / whole["id"]
    assert not (run_dir / "result.json").exists()
    # the run's settings are in the checkpoint (its run state), not in a file beside it that can go missing
    saved = saved_callback_state(str(run_dir / "checkpoint-2"), runner.SETTINGS)
    assert saved["eval_size"] == 2 and saved["seed"] == 0 and saved["overrides"]["mini_batches_per_rollout"] == 4
    assert not (run_dir / runner.LEGACY_SETTINGS).exists()

    capsys.readouterr()
    resumed = compare(_config(out))["runs"][0]
    assert "resumed at step 2/6" in capsys.readouterr().err
    # the record is the whole run's: every evaluation once (step 0 from before the interruption), the same
    # numbers, the training curve of every step, the per-prompt results of every evaluation
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in whole["evals"]] == [0, 2, 4, 6]
    for a, b in zip(resumed["evals"], whole["evals"], strict=True):
        for key in ("in_domain", "out_of_domain", "heldout_nll", "drift_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
    assert [c["step"] for c in resumed["curves"]] == [c["step"] for c in whole["curves"]] == list(range(1, 7))
    for a, b in zip(resumed["curves"], whole["curves"], strict=True):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5), a["step"]
        assert a.get("clip_frac") == pytest.approx(b.get("clip_frac"), abs=1e-6), a["step"]
    cut_prompts, whole_prompts = read_prompts(run_dir), read_prompts(tmp_path / "whole" / whole["id"])
    assert [p["step"] for p in cut_prompts] == [p["step"] for p in whole_prompts] == [0, 2, 4, 6]
    assert [p["correct"] for p in cut_prompts] == [p["correct"] for p in whole_prompts]
    # the time is the whole run's too: both pieces' training and evaluation
    assert resumed["eval_s"] > 0 and resumed["train_s"] > 0
    # a finished run keeps its record only: checkpoints are gigabytes for a real model (and TRL's model card,
    # written with each checkpoint, describes no model that is kept)
    assert sorted(p.name for p in run_dir.iterdir()) == ["prompts.jsonl.gz", "result.json"]


def test_a_checkpoint_made_with_other_settings_is_refused_in_one_line(tmp_path, monkeypatch):
    out = tmp_path / "o"
    with monkeypatch.context() as patch:
        _die_at(patch, 3)
        with pytest.raises(RuntimeError, match="killed"):
            compare(_config(out))
    with pytest.raises(
        UserError, match=r"checkpoint-2: an unfinished run made with other settings \(eval_size\)"
    ):
        compare(_config(out, eval_size=3))
    checkpoint = str(next(out.glob("*/checkpoint-2")))
    # left as it was: the run can still resume with its own settings
    assert saved_callback_state(checkpoint, runner.SETTINGS)["eval_size"] == 2


def test_a_checkpoint_that_does_not_say_its_settings_is_refused_and_older_ones_keep_resuming(
    tmp_path, monkeypatch, capsys
):
    """Checkpoints of psft before the settings moved into the run state kept them in `settings.json` beside the
    checkpoint: those resume; one with neither (that file lost) is refused, never resumed on a guess."""
    out = tmp_path / "o"
    with monkeypatch.context() as patch:
        _die_at(patch, 3)
        with pytest.raises(RuntimeError, match="killed"):
            compare(_config(out))
    checkpoint = next(out.glob("*/checkpoint-2"))
    path = checkpoint / RUN_STATE.format(0)
    state = torch.load(path, weights_only=True)
    settings = state["callbacks"].pop(runner.SETTINGS)
    torch.save(state, path)  # as psft before the change wrote it
    write_manifest(str(checkpoint))  # the file's new size: still a complete checkpoint
    with pytest.raises(UserError, match=r"checkpoint-2: an unfinished run whose settings are not recorded"):
        compare(_config(out))

    (checkpoint.parent / runner.LEGACY_SETTINGS).write_text(json.dumps(settings))
    capsys.readouterr()
    record = compare(_config(out))["runs"][0]
    assert "resumed at step 2/6" in capsys.readouterr().err
    assert [e["step"] for e in record["evals"]] == [0, 2, 4, 6]
    assert not (checkpoint.parent / runner.LEGACY_SETTINGS).exists()  # a finished run keeps its record only


def test_checkpoint_every_is_checked_before_anything_trains(tmp_path):
    with pytest.raises(UserError, match="checkpoint_every must be a number of optimizer steps >= 0"):
        compare(_config(tmp_path, checkpoint_every=-1))
    config = _config(tmp_path)
    config.methods[0]["rollout_epochs"] = 2
    with pytest.raises(UserError, match="rollout_epochs > 1 cannot resume"):
        compare(config)


def test_a_directory_another_compare_is_writing_to_is_refused_at_once(tmp_path):
    """Two `psft compare` into one directory would train the same unfinished runs twice, side by side."""
    (tmp_path / "psft.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with pytest.raises(UserError, match=r"output_dir .* is in use by another run \(pid"):
        compare(_config(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["psft.lock"]  # nothing written, nothing trained


def test_an_option_the_trainer_refuses_is_refused_before_any_run_trains(tmp_path):
    config = _config(tmp_path)
    config.methods.append({"name": "smooth", "loss_type": "sft", "label_smoothing_factor": 0.1})
    with pytest.raises(UserError, match=r"method 'smooth': label_smoothing_factor=0.1 is not supported"):
        compare(config)
    assert not any(tmp_path.iterdir())
