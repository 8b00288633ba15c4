"""ASFT and SFT-KL against transcriptions of their authors' code; dropout off so an unchanged model gives ratio 1;
a reference that cannot be formed stops before training."""

import logging

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig
from trainer_support import TOKENIZER, common_args, make_trainer, prompt_completion_data

from psft import PSFTConfig, PSFTTrainer
from psft.core.losses import (
    LOSSES,
    asft_loss,
    dft_loss,
    full_vocab_kl,
    label_log_probs_from_logits,
    sft_kl_loss,
    token_mean,
)
from psft.core.reference import ReferenceSource, check_reference_vocabulary
from psft.data.tiny import make_tiny_llama
from psft.errors import UserError


def _asft_authors(logits, labels, ref_logits, alpha):
    """LLaMA-Factory `asft_loss_func` / `_asft_cross_entropy` (= zhuchichi56/ASFT train_v2.py mode "asft"),
    transcribed on already-shifted logits: DFT (CE * sg(exp(-CE))) mean over valid tokens + alpha * the mean over
    valid tokens of F.kl_div(log_softmax(policy), softmax(ref)).sum(-1)."""
    vocab = logits.shape[-1]
    flat, ref, target = logits.reshape(-1, vocab).float(), ref_logits.reshape(-1, vocab), labels.reshape(-1)
    ce = F.cross_entropy(flat, target, ignore_index=-100, reduction="none")
    valid = target != -100
    dft = (ce[valid] * torch.exp(-ce[valid]).detach()).mean()
    kl = F.kl_div(F.log_softmax(flat, dim=-1), F.softmax(ref, dim=-1), reduction="none").sum(-1)
    mask = valid.float()
    return dft + alpha * (kl * mask).sum() / mask.sum()


def _batch(seed=0, vocab=257, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (scale * torch.randn(4, 9, vocab, generator=g)).requires_grad_()
    ref_logits = scale * torch.randn(4, 9, vocab, generator=g)
    labels = torch.randint(0, vocab, (4, 9), generator=g)
    labels[0, :3] = -100
    labels[3, 6:] = -100
    return logits, ref_logits, labels


def _asft_ours(logits, ref_logits, labels, alpha, chunk_size):
    mask = labels != -100
    log_probs = label_log_probs_from_logits(logits, labels, mask, chunk_size=chunk_size)
    out = asft_loss(log_probs, mask.float(), logits, ref_logits, asft_lambda=alpha, chunk_size=chunk_size)
    return token_mean(out.per_token, mask.sum()), out


@pytest.mark.parametrize("alpha", [0.1, 1.0])
def test_asft_loss_and_gradient_equal_the_authors_full_vocabulary_formula(alpha):
    logits, ref_logits, labels = _batch()
    theirs = _asft_authors(logits, labels, ref_logits, alpha)
    (grad_theirs,) = torch.autograd.grad(theirs, logits)
    for chunk_size in (1, 5, 10_000):  # chunked and unchunked give the same loss and gradient
        ours, out = _asft_ours(logits, ref_logits, labels, alpha, chunk_size)
        (grad_ours,) = torch.autograd.grad(ours, logits)
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-8)
    assert (out.metrics["kl_ref"][labels != -100] > 0).all()
    assert (grad_ours[labels == -100] == 0).all()  # nothing off the loss positions
    assert LOSSES["asft"].tensors == ("logits", "ref_logits")


def test_asft_kl_gradient_is_p_minus_q_and_zero_at_the_reference():
    logits, ref_logits, labels = _batch(seed=1)
    mask = labels != -100
    kl = full_vocab_kl(logits, ref_logits, mask, chunk_size=3)
    (grad,) = torch.autograd.grad(kl.sum(), logits)
    expected = (logits.softmax(-1) - ref_logits.softmax(-1)) * mask.unsqueeze(-1)
    torch.testing.assert_close(grad, expected.detach(), rtol=1e-5, atol=1e-7)
    same = full_vocab_kl(logits.detach(), logits.detach(), mask)
    assert same.abs().max().item() < 1e-5
    # lambda 0 is DFT exactly
    log_probs = label_log_probs_from_logits(logits, labels, mask)
    a = asft_loss(log_probs, mask.float(), logits, ref_logits, asft_lambda=0.0).per_token.sum()
    b = dft_loss(log_probs, mask.float()).per_token.sum()
    assert torch.equal(
        torch.autograd.grad(a, logits, retain_graph=True)[0], torch.autograd.grad(b, logits)[0]
    )


def _verl_sft_kl(log_probs, ref_log_probs, mask, beta):
    """verl `kl_penalty(..., "low_var_kl")` (core_algos.py, as in the PSFT authors' fork), transcribed, aggregated
    like dp_actor's `agg_loss(kld, response_mask, "token-mean")` and added to the token-mean NLL with kl_loss_coef."""
    kl = ref_log_probs - log_probs
    kl = torch.clamp(kl, min=-20, max=20)
    kld = torch.clamp(torch.exp(kl) - kl - 1, min=-10, max=10)
    nll = -(log_probs * mask).sum() / mask.sum()
    return nll + beta * (kld * mask).sum() / mask.sum()


def test_sft_kl_loss_and_gradient_equal_verls_low_var_kl_including_its_clamps():
    g = torch.Generator().manual_seed(0)
    log_probs = (-4 * torch.rand(3, 8, generator=g, dtype=torch.float64)).requires_grad_()
    ref = -4 * torch.rand(3, 8, generator=g, dtype=torch.float64)
    ref[0, 0] = log_probs[0, 0].item() + 3.0  # k3 = e^3 - 4 = 16.1: the [-10, 10] clamp binds
    ref[1, 1] = log_probs[1, 1].item() + 25.0  # x = 25: the [-20, 20] clamp binds (and then the k3 one)
    ref[2, 2] = log_probs[2, 2].item() - 30.0  # x = -30: clamped to -20, k3 = 19 -> 10
    mask = torch.ones(3, 8, dtype=torch.float64)
    mask[2, 7] = 0
    out = sft_kl_loss(log_probs, mask, ref_log_probs=ref, beta=0.5)
    ours = token_mean(out.per_token, mask.sum())
    (grad_ours,) = torch.autograd.grad(ours, log_probs)
    theirs = _verl_sft_kl(log_probs, ref, mask, 0.5)
    (grad_theirs,) = torch.autograd.grad(theirs, log_probs)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-12, atol=1e-12)
    kl = out.metrics["kl_ref"]
    assert kl[0, 0].item() == kl[1, 1].item() == kl[2, 2].item() == 10.0
    # where a clamp binds the KL term gives no gradient: only the NLL's -1 / N is left
    n = mask.sum().item()
    for row, col in ((0, 0), (1, 1), (2, 2)):
        assert grad_ours[row, col].item() == pytest.approx(-1 / n)


# ------------------------------------------------------------------ trainer, reference, dropout, bad input
def test_trainer_asft_loss_is_the_authors_formula_against_the_frozen_initial_model(tmp_path):
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, loss_type="asft", asft_lambda=0.5, max_steps=1)
    assert trainer.reference == "copy"  # "auto": the table cannot give the whole distribution
    initial = make_tiny_llama(TOKENIZER, seed=0).eval()
    with torch.no_grad():  # move the trained model away from its start
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        logits = trainer.model(**inputs).logits[:, :-1]
        ref_logits = initial(**inputs).logits[:, :-1]
    expected = _asft_authors(logits, batch["labels"][:, 1:], ref_logits, 0.5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert trainer._sums["kl_ref"].item() > 0


def test_asft_and_sft_kl_train_and_log_their_kl(tmp_path):
    for loss_type in ("asft", "sft_kl"):
        trainer = make_trainer(tmp_path / loss_type, loss_type=loss_type, max_steps=4, learning_rate=2e-2)
        trainer.train()
        logs = [log for log in trainer.state.log_history if "kl_ref" in log]
        assert logs[0]["kl_ref"] == pytest.approx(0.0, abs=1e-5) and logs[-1]["kl_ref"] > 1e-4
        assert logs[-1]["nll"] < logs[0]["nll"]


def _dropout_trainer(tmp_path, **overrides):
    model = make_tiny_llama(TOKENIZER, seed=0)
    model.config.attention_dropout = 0.1
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    model.model.embed_dropout = torch.nn.Dropout(0.1)  # a module dropout as well (GPT-2/OPT style)
    forward = model.model.embed_tokens.forward
    model.model.embed_tokens.forward = lambda ids: model.model.embed_dropout(forward(ids))
    args = PSFTConfig(
        **common_args(
            output_dir=str(tmp_path / "out"),
            learning_rate=0.0,
            mini_batches_per_rollout=4,
            max_steps=8,
            **overrides,
        )
    )
    return PSFTTrainer(
        model=model, args=args, train_dataset=prompt_completion_data(), processing_class=TOKENIZER
    )


def test_dropout_is_off_by_default_so_an_unchanged_model_has_ratio_exactly_one(tmp_path, caplog):
    torch.set_num_threads(1)
    trainer = _dropout_trainer(tmp_path)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "ratio/mean" in log]
    assert len(logs) == 8
    for log in logs:
        assert log["ratio/mean"] == 1.0 and log["ratio/max"] == 1.0
        assert log["clip_ratio/high"] == 0.0 and log["clip_ratio/low"] == 0.0

    with caplog.at_level(logging.WARNING):
        noisy = _dropout_trainer(tmp_path / "noisy", disable_dropout=False)
        noisy.train()
    assert "every ratio includes dropout noise" in caplog.text
    logs = [log for log in noisy.state.log_history if "ratio/mean" in log]
    assert any(log["ratio/max"] != 1.0 for log in logs[1:])


def test_a_reference_that_cannot_be_formed_stops_before_training_naming_the_field(tmp_path):
    with pytest.raises(UserError, match="set reference to 'copy'"):  # the table has no distribution
        make_trainer(tmp_path, loss_type="asft", reference="precompute", max_steps=1)
    for loss_type in ("asft", "sft_kl"):  # no adapter to disable: no reference reachable
        with pytest.raises(UserError, match="reference='adapter' needs a PEFT model"):
            make_trainer(tmp_path, loss_type=loss_type, reference="adapter", max_steps=1)
    other = make_tiny_llama(TOKENIZER, seed=0)
    other.resize_token_embeddings(len(TOKENIZER) + 8)
    with pytest.raises(UserError, match="vocabulary .* differs.*set reference"):
        check_reference_vocabulary(other, make_tiny_llama(TOKENIZER, seed=0))
    with pytest.raises(UserError, match="eaft_entropy"):
        PSFTConfig(**common_args(output_dir=str(tmp_path), loss_type="eaft", eaft_entropy="top20"))


def test_adapter_reference_gives_the_base_models_distribution(tmp_path):
    torch.set_num_threads(1)
    args = PSFTConfig(
        **common_args(output_dir=str(tmp_path), loss_type="asft", max_steps=2, learning_rate=5e-2)
    )
    trainer = PSFTTrainer(
        model=make_tiny_llama(TOKENIZER, seed=0),
        args=args,
        train_dataset=prompt_completion_data(),
        processing_class=TOKENIZER,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    assert trainer.reference == "adapter"
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
    }
    ref = trainer._reference_source().logits(inputs)
    base = make_tiny_llama(TOKENIZER, seed=0).eval()
    with torch.no_grad():
        expected = base(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits[:, :-1]
        adapted = trainer.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(ref, expected, rtol=1e-5, atol=1e-5)
    assert (adapted[:, :-1] - expected).abs().max() > 1e-3  # the adapter does change the model
    assert isinstance(trainer._reference_source(), ReferenceSource)


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
def test_unchanged_model_has_full_vocabulary_kl_exactly_zero(tmp_path, bf16):
    """lr 0: the frozen copy's distribution is the trained model's, bit for bit, under autocast too."""
    torch.set_num_threads(1)
    args = PSFTConfig(
        **common_args(
            output_dir=str(tmp_path / "out"), loss_type="asft", learning_rate=0.0, max_steps=4, bf16=bf16
        )
    )
    trainer = PSFTTrainer(
        model=make_tiny_llama(TOKENIZER, seed=0),
        args=args,
        train_dataset=prompt_completion_data(),
        processing_class=TOKENIZER,
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "nll" in log]
    assert [log["kl_ref"] for log in logs] == [0.0] * 4
