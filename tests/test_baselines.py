"""The paper's baselines and ablations: SFT-KL, ASFT, fixed old policy, SFT warm-up, reference log-probs."""

import pytest
import torch
from peft import LoraConfig
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

from psft import PSFTConfig
from psft.core.losses import asft_label_kl_loss, dft_loss, sft_kl_loss, sft_loss
from psft.core.reference import ReferenceTable
from psft.data.tiny import make_tiny_llama
from psft.errors import UserError


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


# per-token values: p = model prob, q = reference prob of the demonstration token
P = torch.tensor([0.5, 0.2, 0.9], dtype=torch.float64)
Q = torch.tensor([0.25, 0.4, 0.9], dtype=torch.float64)
MASK = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)


def test_sft_kl_per_token_loss_and_gradient_match_hand_derivation():
    log_probs = _leaf(P.log().tolist())
    out = sft_kl_loss(log_probs, MASK, ref_log_probs=Q.log(), beta=0.5)
    # k3 on x = log(q/p): q/p - log(q/p) - 1; loss = -log p + beta * k3
    k3 = Q / P - (Q / P).log() - 1
    torch.testing.assert_close(out.per_token, (-P.log() + 0.5 * k3) * MASK)
    out.per_token.sum().backward()
    # d/dlogp: -1 + beta * (1 - q/p)
    torch.testing.assert_close(log_probs.grad, (-1 + 0.5 * (1 - Q / P)) * MASK)
    torch.testing.assert_close(out.metrics["kl_ref"], k3)


def test_asft_label_kl_per_token_loss_and_gradient_match_hand_derivation():
    log_probs = _leaf(P.log().tolist())
    out = asft_label_kl_loss(log_probs, MASK, ref_log_probs=Q.log(), asft_lambda=0.1)
    # k3 on x = log(p/q): p/q - log(p/q) - 1; loss = -sg(p) log p + lambda * k3
    k3 = P / Q - (P / Q).log() - 1
    torch.testing.assert_close(out.per_token, (-P * P.log() + 0.1 * k3) * MASK)
    out.per_token.sum().backward()
    # d/dlogp: -p + lambda * (p/q - 1)
    torch.testing.assert_close(log_probs.grad, (-P + 0.1 * (P / Q - 1)) * MASK)


def test_zero_kl_weight_reduces_to_sft_and_dft_exactly():
    for loss, base, kwargs in (
        (sft_kl_loss, sft_loss, {"beta": 0.0}),
        (asft_label_kl_loss, dft_loss, {"asft_lambda": 0.0}),
    ):
        a, b = _leaf(P.log().tolist()), _leaf(P.log().tolist())
        loss(a, MASK, ref_log_probs=Q.log(), **kwargs).per_token.sum().backward()
        base(b, MASK).per_token.sum().backward()
        assert torch.equal(a.grad, b.grad)
    # and the KL vanishes where the model equals the reference
    assert sft_kl_loss(P.log(), MASK, ref_log_probs=P.log()).metrics["kl_ref"].abs().max() == 0


def test_sft_kl_with_beta_zero_trains_like_sft(tmp_path):
    run = dict(max_steps=4, gradient_accumulation_steps=2)
    kl = make_trainer(tmp_path / "kl", loss_type="sft_kl", beta=0.0, **run)
    kl.train()
    sft = make_trainer(tmp_path / "sft", loss_type="sft", **run)
    sft.train()
    assert_same_params(params(kl), params(sft), atol=1e-7)


def test_reference_log_probs_are_the_initial_models_at_every_step_and_anchor_training(tmp_path):
    snapshots = Snapshots()
    trainer = make_trainer(
        tmp_path,
        trainer_cls=Recorder,
        callbacks=[snapshots],
        loss_type="sft_kl",
        beta=5.0,
        max_steps=6,
        learning_rate=2e-2,
    )
    trainer.train()
    assert trainer.old_pass_calls == 0  # sft_kl has no old policy
    assert (tmp_path / "out" / "reference_log_probs.pt").is_file()
    for record in trainer.records:
        loss_tokens = record["labels"][:, 1:] != -100
        expected = reference_log_probs(snapshots.by_step[0], record)
        torch.testing.assert_close(record["ref"][loss_tokens], expected[loss_tokens], atol=1e-5, rtol=1e-5)
    logs = [log for log in trainer.state.log_history if "kl_ref" in log]
    assert logs[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6) and logs[-1]["kl_ref"] > 1e-4
    # the anchor works: a strong KL keeps the model closer to its start than plain SFT does
    sft = make_trainer(tmp_path / "sft", loss_type="sft", max_steps=6, learning_rate=2e-2)
    sft.train()
    initial = snapshots.by_step[0]
    assert max_param_diff(params(trainer), initial) < max_param_diff(params(sft), initial)


def test_reference_sources_agree_precompute_copy_and_disabled_adapter(tmp_path):
    refs = {}
    for mode in ("precompute", "copy"):
        trainer = make_trainer(
            tmp_path / mode, trainer_cls=Recorder, loss_type="asft_label_kl", reference=mode, max_steps=3
        )
        trainer.train()
        refs[mode] = [r["ref"] for r in trainer.records]
    loss_tokens = [r["labels"][:, 1:] != -100 for r in trainer.records]
    for a, b, m in zip(refs["precompute"], refs["copy"], loss_tokens, strict=True):
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)

    args = PSFTConfig(
        **common_args(
            output_dir=str(tmp_path / "lora"), loss_type="asft_label_kl", max_steps=3, learning_rate=5e-2
        )
    )
    lora = Recorder(
        model=make_tiny_llama(TOKENIZER, seed=0),
        args=args,
        train_dataset=prompt_completion_data(),
        processing_class=TOKENIZER,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    assert lora.reference == "adapter"  # "auto" with a PEFT model
    lora.train()
    # the adapter moved the model, yet the reference stays the base model's
    for a, b, m in zip(refs["precompute"], [r["ref"] for r in lora.records], loss_tokens, strict=True):
        torch.testing.assert_close(a[m], b[m], atol=1e-5, rtol=1e-5)
    assert not (tmp_path / "lora" / "reference_log_probs.pt").exists()


def test_fixed_old_policy_is_the_initial_model_and_never_refreshes(tmp_path):
    snapshots = Snapshots()
    trainer = make_trainer(
        tmp_path,
        trainer_cls=Recorder,
        callbacks=[snapshots],
        old_policy="fixed",
        mini_batches_per_rollout=2,
        max_steps=6,
        learning_rate=2e-2,
    )
    trainer.train()
    assert trainer.old_pass_calls == 0  # the stored reference serves as the old policy
    for record in trainer.records:
        loss_tokens = record["labels"][:, 1:] != -100
        expected = reference_log_probs(snapshots.by_step[0], record)
        torch.testing.assert_close(record["old"][loss_tokens], expected[loss_tokens], atol=1e-5, rtol=1e-5)
    ratios = [log["ratio/mean"] for log in trainer.state.log_history if "ratio/mean" in log]
    assert abs(ratios[-1] - 1) > abs(ratios[0] - 1)  # the gap to the fixed old policy keeps growing


def test_sft_warmup_steps_are_plain_sft_then_rollouts_start(tmp_path):
    warm = make_trainer(
        tmp_path / "warm",
        trainer_cls=Recorder,
        sft_warmup_steps=3,
        mini_batches_per_rollout=2,
        max_steps=7,
        logging_steps=1,
    )
    warm.train()
    sft = make_trainer(tmp_path / "sft", loss_type="sft", max_steps=3)
    sft.train()
    by_step = {r["step"]: r for r in warm.records}
    # steps 0-2 are SFT (fetched as rollouts of at most K, with no old-policy pass); PSFT rollouts of
    # K = 2 start at the warm-up's end: steps 3-4 and 5-6
    assert [by_step[s]["rollout"] for s in range(7)] == [1, 1, 2, 3, 3, 4, 4]
    assert warm.old_pass_calls == 2
    logs = {log["step"]: log for log in warm.state.log_history if "nll" in log}
    assert all("ratio/mean" not in logs[s] for s in (1, 2, 3)) and logs[4]["ratio/mean"] == 1.0
    assert logs[1]["loss"] == pytest.approx(logs[1]["nll"])  # SFT's loss is the NLL

    with pytest.warns(UserWarning, match="covers all max_steps=3"):  # said, since no step uses PSFT
        early = make_trainer(tmp_path / "early", sft_warmup_steps=3, mini_batches_per_rollout=2, max_steps=3)
    early.train()
    assert_same_params(params(early), params(sft), atol=1e-7)


def test_bad_baseline_configuration_fails_clearly(tmp_path):
    with pytest.raises(UserError, match="old_policy"):
        PSFTConfig(**common_args(output_dir=str(tmp_path), old_policy="never"))
    with pytest.raises(UserError, match="cannot be combined"):
        PSFTConfig(**common_args(output_dir=str(tmp_path), sft_warmup_steps=2, rollout_epochs=2))
    with pytest.raises(UserError, match="needs a PEFT model"):
        make_trainer(tmp_path, loss_type="sft_kl", reference="adapter", max_steps=1)


def test_reference_table_is_looked_up_by_content_and_rejects_unknown_rows():
    def batch(ids, labels):
        ids = torch.tensor(ids)
        return {"input_ids": ids, "attention_mask": (ids != 0).long(), "labels": torch.tensor(labels)}

    table = ReferenceTable()
    # loss tokens only: row 0 scores its last two targets, row 1 its only real target
    table.add(
        batch([[5, 6, 7, 0], [8, 9, 0, 0]], [[-100, -100, 6, 7], [-100, 9, -100, -100]]),
        torch.tensor([[9.0, -1.0, -2.0], [-3.0, 9.0, 9.0]]),
    )
    assert sorted(len(v) for v in table.rows.values()) == [1, 2]  # nothing stored off the loss tokens
    # the same rows, in another order and with other padding, find their values
    out = table.lookup(
        batch([[8, 9, 0, 0, 0], [5, 6, 7, 0, 0]], [[-100, 9, -100, -100, -100], [-100, -100, 6, 7, -100]])
    )
    torch.testing.assert_close(out, torch.tensor([[-3.0, 0, 0, 0], [0, -1.0, -2.0, 0]]))
    with pytest.raises(UserError, match="training data changed"):  # other tokens
        table.lookup(batch([[5, 6, 8]], [[-100, -100, 8]]))
    with pytest.raises(UserError, match="training data changed"):  # the same tokens with another loss mask
        table.lookup(batch([[5, 6, 7]], [[-100, 6, 7]]))
