"""The old/reference pass (`psft.logprobs.label_log_probs`: the training forward with TRL's fused head, no gradient)
against the model's own full logits, for each LM-head convention."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)
from trl.trainer.utils import add_fused_lm_head

from psft.logprobs import label_log_probs

SHAPE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    pad_token_id=0,
)


def full_logits_log_probs(model, inputs, labels):
    """The plain way: the model's logits (with its own scaling and softcapping), log-softmax, gather."""
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].float()
    targets = labels[:, 1:]
    picked = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * targets.ne(-100)


def batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0  # right padding
    labels = input_ids.clone()
    labels[:, :5] = -100  # prompt
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask}, labels


def make(model_cls, config_cls, vocab=97, seed=0, **extra):
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=vocab, **SHAPE, **extra)).eval()
    with torch.no_grad():  # sharpen the head so that a wrong scale or softcap shows in the log-probs
        model.get_output_embeddings().weight.mul_(20)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    return model


HEADS = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "llama_untied_bias": (LlamaForCausalLM, LlamaConfig, {"tie_word_embeddings": False}),
    "gemma2_softcap": (Gemma2ForCausalLM, Gemma2Config, {"final_logit_softcapping": 3.0, "head_dim": 8}),
    "cohere_logit_scale": (CohereForCausalLM, CohereConfig, {"logit_scale": 0.3}),
    "granite_logits_scaling": (GraniteForCausalLM, GraniteConfig, {"logits_scaling": 4.0}),
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_equals_full_logits(name):
    model_cls, config_cls, extra = HEADS[name]
    model = make(model_cls, config_cls, **extra)
    inputs, labels = batch(model.config.vocab_size)
    expected = full_logits_log_probs(model, inputs, labels)
    got = label_log_probs(model, {**inputs, "labels": labels})
    assert got.shape == expected.shape == (3, 11)
    assert got.dtype == torch.float32
    assert expected[labels[:, 1:].ne(-100)].std() > 0.5  # not a flat distribution: scaling matters
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert (got[labels[:, 1:] == -100] == 0).all()


def test_shift_labels_are_scored_without_shifting():
    model = make(LlamaForCausalLM, LlamaConfig)
    inputs, labels = batch(97)
    shift_labels = torch.cat([labels[:, 1:], torch.full((3, 1), -100)], dim=1)
    got = label_log_probs(model, {**inputs, "shift_labels": shift_labels})
    assert got.shape == (3, 12)
    torch.testing.assert_close(got[:, :-1], label_log_probs(model, {**inputs, "labels": labels}))
    assert (got[:, -1] == 0).all()


def test_vocabulary_wider_than_one_tile():
    # 2 of TRL's 32768-column tiles, the last one partial: the online log-sum-exp across tiles must be exact
    vocab = 32768 + 301
    model = make(LlamaForCausalLM, LlamaConfig, vocab=vocab)
    inputs, labels = batch(vocab)
    labels[0, -1] = vocab - 1  # a target in the second tile
    inputs["input_ids"][0, -1] = vocab - 1
    expected = full_logits_log_probs(model, inputs, labels)
    torch.testing.assert_close(
        label_log_probs(model, {**inputs, "labels": labels}), expected, atol=5e-5, rtol=1e-5
    )


def test_lora_model_and_its_disabled_adapter():
    peft = pytest.importorskip("peft")
    base = make(LlamaForCausalLM, LlamaConfig)
    inputs, labels = batch(97)
    base_expected = full_logits_log_probs(base, inputs, labels)
    model = peft.get_peft_model(
        base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    expected = full_logits_log_probs(model, inputs, labels)
    assert (expected - base_expected).abs().max() > 1e-2  # the adapter changes the log-probs
    torch.testing.assert_close(
        label_log_probs(model, {**inputs, "labels": labels}), expected, atol=2e-5, rtol=1e-5
    )
    with model.disable_adapter():
        got = label_log_probs(model, {**inputs, "labels": labels})
    torch.testing.assert_close(got, base_expected, atol=2e-5, rtol=1e-5)
