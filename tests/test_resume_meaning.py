"""A resumed run means the same as the run that saved it, or refuses; checkpoints are checked before loading;
evaluation loss is NLL for every objective; options PSFTTrainer does not honour are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from trainer_support import TOKENIZER, common_args, make_trainer, prompt_completion_data

from psft import PSFTConfig, PSFTTrainer
from psft.core.checkpoint import MANIFEST, checkpoint_problem, resolve_resume, write_manifest
from psft.core.run_meaning import RUN_FILE
from psft.data.tiny import make_tiny_llama
from psft.errors import UserError

RUN = dict(mini_batches_per_rollout=2, max_steps=2, save_strategy="steps", save_steps=2, logging_steps=1)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A PSFT run (K=2) that saved checkpoint-2 (about 2 s)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("saved")
    make_trainer(root, **RUN).train()
    return root / "out"


def copy_run(saved_run, tmp_path):
    shutil.copytree(saved_run, tmp_path / "out")
    return tmp_path / "out"


@pytest.mark.parametrize(
    ("change", "field", "before", "after"),
    [
        (dict(mini_batches_per_rollout=4), "mini_batches_per_rollout", 2, 4),
        (dict(loss_type="sft"), "loss_type", "'psft'", "'sft'"),
        (dict(epsilon_high=0.5), "epsilon_high", 0.28, 0.5),
        (dict(epsilon=0.1), "epsilon", 0.2, 0.1),
        (dict(rollout_epochs=2), "rollout_epochs", 1, 2),
        (dict(old_policy="fixed"), "old_policy", "'rollout'", "'fixed'"),
        (dict(sft_warmup_steps=1), "sft_warmup_steps", 0, 1),
        (dict(per_device_train_batch_size=2), "per_device_train_batch_size", 4, 2),
        (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps", 1, 2),
        (dict(seed=1), "seed", 0, 1),
    ],
)
def test_resuming_with_a_changed_meaning_names_the_field_and_both_values(
    saved_run, tmp_path, change, field, before, after
):
    copy_run(saved_run, tmp_path)
    trainer = make_trainer(tmp_path, **{**RUN, "max_steps": 4, **change})
    message = f"was saved with {field}={before}, this run has {field}={after}"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]


def test_resuming_on_other_data_is_refused(saved_run, tmp_path):
    copy_run(saved_run, tmp_path)
    trainer = make_trainer(tmp_path, data=prompt_completion_data(65), **{**RUN, "max_steps": 4})
    with pytest.raises(UserError, match="was trained on other data"):
        trainer.train(resume_from_checkpoint=True)


def test_resuming_with_another_world_size_is_refused(saved_run, tmp_path):
    out = copy_run(saved_run, tmp_path)
    record = out / "checkpoint-2" / RUN_FILE
    record.write_text(json.dumps({**json.loads(record.read_text()), "world_size": 2}))
    write_manifest(str(out / "checkpoint-2"))
    with pytest.raises(UserError, match="was saved with world_size=2, this run has world_size=1"):
        make_trainer(tmp_path, **{**RUN, "max_steps": 4}).train(resume_from_checkpoint=True)


def test_the_same_meaning_resumes_and_trains_on(saved_run, tmp_path):
    copy_run(saved_run, tmp_path)
    trainer = make_trainer(tmp_path, **{**RUN, "max_steps": 3})  # max_steps is not part of the meaning
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 3


def test_a_checkpoint_written_by_the_trainer_is_complete_and_its_corruption_is_found(saved_run, tmp_path):
    out = copy_run(saved_run, tmp_path)
    checkpoint = out / "checkpoint-2"
    assert checkpoint_problem(str(checkpoint)) is None
    assert {"model.safetensors", "optimizer.pt", RUN_FILE} <= set(
        json.loads((checkpoint / MANIFEST).read_text())["files"]
    )
    optimizer = checkpoint / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:-10])
    assert "optimizer.pt has" in checkpoint_problem(str(checkpoint))


# ------------------------------------------------------------------------------------- fallback and skip
def fake_checkpoint(directory, complete=True):
    directory.mkdir(parents=True)
    save_file({"w": torch.arange(64, dtype=torch.float32)}, str(directory / "model.safetensors"))
    (directory / "trainer_state.json").write_text("{}")
    if complete:
        write_manifest(str(directory))
    return directory


@pytest.fixture
def warnings_logged(monkeypatch):
    from psft.core import checkpoint

    logged = []
    monkeypatch.setattr(checkpoint.logger, "warning", logged.append)
    return logged


def test_resume_from_the_last_skips_an_incomplete_checkpoint_with_a_warning(tmp_path, warnings_logged):
    good = fake_checkpoint(tmp_path / "checkpoint-2")
    fake_checkpoint(tmp_path / "checkpoint-10", complete=False)  # 10 > 2 numerically, not as text
    assert resolve_resume(str(tmp_path), True) == str(good)
    assert (
        len(warnings_logged) == 1
        and "skipping" in warnings_logged[0]
        and "checkpoint-10" in warnings_logged[0]
    )


@pytest.mark.parametrize("damage", ["truncate", "header", "missing"])
def test_a_corrupt_latest_checkpoint_names_itself_and_the_previous_good_one(tmp_path, damage):
    good = fake_checkpoint(tmp_path / "checkpoint-2")
    bad = fake_checkpoint(tmp_path / "checkpoint-4")
    weights = bad / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:50])
    elif damage == "header":  # same size, a header length that runs past the end
        weights.write_bytes((10**6).to_bytes(8, "little") + weights.read_bytes()[8:])
    else:
        weights.unlink()
    for resume in (True, str(bad)):
        with pytest.raises(UserError) as raised:
            resolve_resume(str(tmp_path), resume)
        message = str(raised.value)
        assert f"{bad} is corrupt" in message and f"the previous good checkpoint is {good}" in message


def test_an_explicit_checkpoint_from_another_tool_is_accepted_after_checking_its_headers(
    tmp_path, warnings_logged
):
    other = fake_checkpoint(tmp_path / "checkpoint-3", complete=False)
    assert resolve_resume(str(tmp_path), str(other)) == str(other)
    assert "only its safetensors headers were checked" in warnings_logged[0]
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    with pytest.raises(UserError, match="checkpoint-3 is corrupt: model.safetensors"):
        resolve_resume(str(tmp_path), str(other))


# -------------------------------------------------------------------------------------- rollout counter
def test_the_rollout_counter_after_a_resume_inside_a_rollout_matches_the_uninterrupted_run(tmp_path):
    run = dict(mini_batches_per_rollout=4, max_steps=6, save_strategy="steps", save_steps=3, logging_steps=1)
    first = make_trainer(tmp_path, **run)
    first.train()
    logged = {e["step"]: e["rollout"] for e in first.state.log_history if "rollout" in e}
    assert logged == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2}
    resumed = make_trainer(tmp_path, **run)
    resumed.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-3"))  # 3 steps into rollout 1
    after = {e["step"]: e["rollout"] for e in resumed.state.log_history if "rollout" in e and e["step"] > 3}
    assert after == {4: 1, 5: 2, 6: 2}


# ------------------------------------------------------------------------------ evaluation and options
def test_evaluation_loss_is_plain_nll_for_every_objective(tmp_path):
    data = prompt_completion_data(16)

    def eval_loss(loss_type):
        args = PSFTConfig(**common_args(output_dir=str(tmp_path / loss_type), loss_type=loss_type))
        trainer = PSFTTrainer(
            model=make_tiny_llama(TOKENIZER, seed=0),
            args=args,
            train_dataset=data,
            eval_dataset=data,
            processing_class=TOKENIZER,
        )
        return trainer.evaluate()["eval_loss"]

    sft = eval_loss("sft")
    assert eval_loss("dft") == pytest.approx(sft, rel=1e-6)  # TRL's DFT eval loss is ~10x smaller
    assert eval_loss("psft") == pytest.approx(sft, rel=1e-6)


def test_a_compute_loss_func_is_refused(tmp_path):
    args = PSFTConfig(**common_args(output_dir=str(tmp_path), max_steps=1))
    with pytest.raises(UserError, match="compute_loss_func is not supported"):
        PSFTTrainer(
            model=make_tiny_llama(TOKENIZER),
            args=args,
            train_dataset=prompt_completion_data(8),
            processing_class=TOKENIZER,
            compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum(),
        )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (dict(label_smoothing_factor=0.1), "label_smoothing_factor=0.1 is not supported"),
        (dict(average_tokens_across_devices=False), "average_tokens_across_devices=false is not supported"),
    ],
)
def test_options_the_trainer_does_not_honour_are_refused(tmp_path, option, message):
    with pytest.raises(UserError, match=message):
        make_trainer(tmp_path, max_steps=1, **option)


def test_resume_from_the_last_with_only_incomplete_checkpoints_says_how_to_use_one(tmp_path, warnings_logged):
    fake_checkpoint(tmp_path / "checkpoint-3", complete=False)
    with pytest.raises(
        UserError, match=r"no complete checkpoint in .*: 1 without psft_complete.json \(name one"
    ):
        resolve_resume(str(tmp_path), True)
