"""PSFTTrainer: the old-policy schedule, exact token-mean, K=1 equals SFT, EOS in the loss mask."""

import warnings

import pytest
import torch
from datasets import Dataset
from trainer_support import (
    TOKENIZER,
    Recorder,
    Snapshots,
    assert_same_params,
    common_args,
    make_trainer,
    max_param_diff,
    params,
    prompt_completion_data,
    reference_log_probs,
)
from trl import SFTConfig, SFTTrainer

from psft import PSFTConfig, PSFTTrainer
from psft.data.tiny import make_tiny_llama


def test_k1_psft_equals_sft_and_trl_sft_trainer(tmp_path):
    steps = dict(max_steps=6, gradient_accumulation_steps=2)
    with pytest.warns(UserWarning, match="identical to SFT"):
        psft_k1 = make_trainer(tmp_path / "a", loss_type="psft", mini_batches_per_rollout=1, **steps)
    psft_k1.train()
    sft = make_trainer(tmp_path / "b", loss_type="sft", **steps)
    sft.train()
    trl_sft = make_trainer(tmp_path / "c", trainer_cls=SFTTrainer, loss_type="nll", **steps)
    trl_sft.train()
    initial = params(make_trainer(tmp_path / "d", loss_type="sft", **steps))
    assert max_param_diff(params(sft), initial) > 1e-3  # training moved the parameters
    assert_same_params(params(psft_k1), params(sft), atol=1e-7)
    assert_same_params(params(sft), params(trl_sft), atol=1e-6)
    # the surrogate at ratio 1 is -1 per token; nll is logged beside it and equals TRL's loss
    psft_logs = [log for log in psft_k1.state.log_history if "nll" in log]
    trl_logs = [log for log in trl_sft.state.log_history if "loss" in log and "train_runtime" not in log]
    assert all(log["loss"] == pytest.approx(-1.0) for log in psft_logs)
    assert all(log["clip_ratio/high"] == 0.0 and log["ratio/mean"] == pytest.approx(1.0) for log in psft_logs)
    # (TRL's entropy and accuracy are means of per-micro-batch means; ours are exact token means)
    for ours, theirs in zip(psft_logs, trl_logs, strict=True):
        assert ours["nll"] == pytest.approx(theirs["loss"], rel=1e-5)


def test_old_log_probs_come_from_the_rollout_start_and_refresh_every_k_steps(tmp_path):
    k, accumulation = 3, 2
    snapshots = Snapshots()
    # 72 records / (batch 4 x accumulation 2) = 9 optimizer steps: three whole rollouts
    trainer = make_trainer(
        tmp_path,
        data=prompt_completion_data(72),
        trainer_cls=Recorder,
        callbacks=[snapshots],
        max_steps=9,
        mini_batches_per_rollout=k,
        gradient_accumulation_steps=accumulation,
        learning_rate=2e-2,
    )
    trainer.train()
    assert trainer.state.global_step == 9
    # the no-grad pass runs on mini-batches 2..K of each rollout only
    assert trainer.old_pass_calls == 3 * (k - 1) * accumulation
    assert [r["rollout"] for r in trainer.records] == [
        1 + s // k for s in range(9) for _ in range(accumulation)
    ]
    drift_since_start = []
    for record in trainer.records:
        step, start = record["step"], record["step"] - record["step"] % k
        if step == start:
            assert record["old"] is None  # ratio exactly 1, no extra forward
            continue
        expected = reference_log_probs(snapshots.by_step[start], record)
        torch.testing.assert_close(record["old"], expected, atol=1e-5, rtol=1e-5)
        current = reference_log_probs(snapshots.by_step[step], record)
        drift_since_start.append((current - expected).abs().max().item())
    # the old policy really is stale: refreshing it every step would have failed the check above
    assert max(drift_since_start) > 1e-2


def test_partial_rollout_at_the_end_of_each_epoch_is_trained_not_dropped(tmp_path):
    # 40 records / batch 4 = 10 optimizer steps per epoch; K = 4 gives rollouts of 4, 4 and 2 steps.
    trainer = make_trainer(
        tmp_path,
        data=prompt_completion_data(40),
        trainer_cls=Recorder,
        num_train_epochs=2,
        mini_batches_per_rollout=4,
    )
    trainer.train()
    assert trainer.state.global_step == 20
    rollouts = [r["rollout"] for r in trainer.records]
    assert rollouts == [1] * 4 + [2] * 4 + [3] * 2 + [4] * 4 + [5] * 4 + [6] * 2
    seen = torch.cat([r["input_ids"][:, :8] for r in trainer.records[:10]])
    assert seen.shape[0] == 40


def test_max_steps_inside_a_rollout_prefetches_only_what_it_trains(tmp_path):
    trainer = make_trainer(tmp_path, trainer_cls=Recorder, max_steps=6, mini_batches_per_rollout=4)
    trainer.train()
    assert trainer.state.global_step == 6
    assert trainer.old_pass_calls == (4 - 1) + (2 - 1)


def test_rollout_epochs_replay_each_rollout_against_the_same_old_policy(tmp_path):
    # 36 records / batch 4 = 9 micro-batches = mini-batches of 2,2,2,2,1 (GA 2); K = 2, two passes each.
    snapshots = Snapshots()
    trainer = make_trainer(
        tmp_path,
        data=prompt_completion_data(36),
        trainer_cls=Recorder,
        callbacks=[snapshots],
        mini_batches_per_rollout=2,
        rollout_epochs=2,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    assert trainer.state.global_step == 2 * 5
    by_step = {}
    for record in trainer.records:
        by_step.setdefault(record["step"], []).append(record)
    for start in (0, 4):  # rollouts of two mini-batches: steps start..start+3 are m1, m2, m1, m2
        for first, replay in ((start, start + 2), (start + 1, start + 3)):
            for a, b in zip(by_step[first], by_step[replay], strict=True):
                assert torch.equal(a["input_ids"], b["input_ids"])
                torch.testing.assert_close(a["old"], b["old"])
                torch.testing.assert_close(
                    a["old"], reference_log_probs(snapshots.by_step[start], a), atol=1e-5, rtol=1e-5
                )
    # the last rollout holds one real micro-batch, padded with a loss-free one, used twice
    assert [len(by_step[s]) for s in (8, 9)] == [2, 2]
    assert all((r["labels"] == -100).all() for r in (by_step[8][1], by_step[9][1]))
    assert not (by_step[8][0]["labels"] == -100).all()


def test_gradient_accumulation_gives_the_same_parameters_as_one_big_batch(tmp_path):
    run = dict(loss_type="psft", mini_batches_per_rollout=2, max_steps=4, learning_rate=1e-2)
    small = make_trainer(tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=4, **run)
    small.train()
    big = make_trainer(tmp_path / "b", per_device_train_batch_size=32, gradient_accumulation_steps=1, **run)
    big.train()
    initial = params(make_trainer(tmp_path / "c", **run))
    assert max_param_diff(params(big), initial) > 1e-2
    assert_same_params(params(small), params(big), atol=2e-5)
    clipped = [log["clip_ratio/high"] for log in big.state.log_history if "clip_ratio/high" in log]
    assert max(clipped) > 0  # the trust region was active, so the test covers the clipped path too


def test_sft_and_dft_skip_the_old_policy_pass(tmp_path):
    for loss_type in ("sft", "dft"):
        trainer = make_trainer(tmp_path / loss_type, trainer_cls=Recorder, loss_type=loss_type, max_steps=4)
        trainer.train()
        assert trainer.old_pass_calls == 0
        logs = [log for log in trainer.state.log_history if "nll" in log]
        assert logs and "clip_ratio/high" not in logs[0]


def test_psft_logs_its_metrics_every_logging_step(tmp_path):
    trainer = make_trainer(
        tmp_path, max_steps=6, mini_batches_per_rollout=3, logging_steps=2, learning_rate=2e-2
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log and "train_runtime" not in log]
    assert [log["step"] for log in logs] == [2, 4, 6]
    keys = {
        "loss",
        "nll",
        "entropy",
        "mean_token_accuracy",
        "clip_ratio/high",
        "clip_ratio/low",
        "ratio/mean",
        "ratio/max",
        "approx_kl",
        "rollout",
        "num_tokens",
    }
    for log in logs:
        assert keys <= set(log)
        assert (
            0 <= log["clip_ratio/high"] <= 1
            and log["approx_kl"] >= 0
            and log["ratio/max"] >= log["ratio/mean"] * 0.5
        )
    assert [log["rollout"] for log in logs] == [1, 2, 2]


def test_eos_of_completion_and_end_of_turn_of_messages_are_loss_tokens(tmp_path):
    eot = TOKENIZER.convert_tokens_to_ids("<|im_end|>")
    trainer = make_trainer(tmp_path / "pc", max_steps=1)
    for row in trainer.train_dataset:
        targets = [t for t in row["labels"] if t != -100]
        assert targets[-1] == eot
    messages = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": f"{i}+1"},
                    {"role": "assistant", "content": str(i + 1)},
                ]
            }
            for i in range(8)
        ]
    )
    trainer = make_trainer(tmp_path / "msg", data=messages, assistant_only_loss=True, max_steps=1)
    for i, row in enumerate(trainer.train_dataset):
        targets = [t for t in row["labels"] if t != -100]
        assert (
            TOKENIZER.decode(targets) == f"{i + 1}<|im_end|>"
        )  # the answer and its end-of-turn, nothing else


def test_an_sft_config_is_accepted_and_nll_means_sft(tmp_path):
    args = SFTConfig(**common_args(output_dir=str(tmp_path), max_steps=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = PSFTTrainer(
            model=make_tiny_llama(TOKENIZER),
            args=args,
            train_dataset=prompt_completion_data(8),
            processing_class=TOKENIZER,
        )
    assert isinstance(trainer.args, PSFTConfig) and trainer.args.loss_type == "sft"


def test_lora_adapter_trains_with_psft_and_leaves_the_base_weights_alone(tmp_path):
    from peft import LoraConfig

    args = PSFTConfig(
        **common_args(output_dir=str(tmp_path), max_steps=4, mini_batches_per_rollout=2, learning_rate=5e-2)
    )
    trainer = PSFTTrainer(
        model=make_tiny_llama(TOKENIZER, seed=0),
        args=args,
        train_dataset=prompt_completion_data(),
        processing_class=TOKENIZER,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    before = params(trainer)
    trainer.train()
    after = params(trainer)
    lora = [k for k in before if "lora_" in k]
    base = [k for k in before if "lora_" not in k]
    assert lora and max((after[k] - before[k]).abs().max().item() for k in lora) > 1e-3
    assert all(torch.equal(after[k], before[k]) for k in base)
    ratios = [log["ratio/mean"] for log in trainer.state.log_history if "ratio/mean" in log]
    # steps 1 and 3 open a rollout (ratio exactly 1); steps 2 and 4 see the adapter's drift since then
    assert ratios[0] == ratios[2] == 1.0 and abs(ratios[1] - 1) > 1e-4 and abs(ratios[3] - 1) > 1e-4
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_packing_trains_with_psft(tmp_path):
    trainer = make_trainer(tmp_path, packing=True, max_length=64, max_steps=3, mini_batches_per_rollout=3)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch  # padding-free packed rows
    trainer.train()
    logs = [log for log in trainer.state.log_history if "nll" in log]
    assert logs[0]["ratio/mean"] == pytest.approx(1.0) and logs[-1]["ratio/mean"] != pytest.approx(1.0)


def test_old_log_probs_of_a_packed_row_equal_each_sequence_scored_alone(tmp_path):
    trainer = make_trainer(
        tmp_path, data=prompt_completion_data(16), packing=True, max_length=64, max_steps=1
    )
    batch = next(iter(trainer.get_train_dataloader()))
    packed = trainer._old_log_probs(batch)[0]
    positions, ids, labels = batch["position_ids"][0], batch["input_ids"][0], batch["labels"][0]
    starts = (positions == 0).nonzero().flatten().tolist() + [positions.numel()]
    assert len(starts) > 3  # several sequences share the row
    model = trainer.model.eval()
    for start, end in zip(starts[:-1], starts[1:], strict=True):
        with torch.no_grad():
            alone = model(input_ids=ids[None, start:end], labels=labels[None, start:end], fused_lm_head=True)
        torch.testing.assert_close(packed[start : end - 1], alone.log_probs[0], atol=1e-5, rtol=1e-5)
        # the position that would score the next sequence's first token is not a loss token
        assert end == positions.numel() or packed[end - 1] == 0


def test_psft_keeps_no_second_model(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, mini_batches_per_rollout=2)
    trainer.train()
    # the old policy lives as per-token log-probs: the only module the trainer holds is the model itself
    modules = {name for name, value in vars(trainer).items() if isinstance(value, torch.nn.Module)}
    assert modules <= {"model", "model_wrapped"} and trainer.model_wrapped is trainer.model
    assert trainer._ref_model is None and trainer._ref_table is None


@pytest.mark.parametrize("options", [{"gradient_checkpointing": True}, {"bf16": True}])
def test_memory_options_work_with_the_old_policy_pass(tmp_path, options):
    trainer = make_trainer(tmp_path, max_steps=4, mini_batches_per_rollout=2, learning_rate=2e-2, **options)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "ratio/mean" in log]
    assert [log["rollout"] for log in logs] == [1, 1, 2, 2]
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert logs[0]["ratio/mean"] == 1.0 and logs[1]["ratio/mean"] != 1.0
