"""The old/reference pass (`psft.core.logprobs.label_log_probs`: the training forward with TRL's fused head, no gradient)
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

from psft.core.logprobs import label_log_probs

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


# ---------------------------------------------------------------- one path: every caller agrees with it bit for bit

TEXTS = ["The cat sat on the mat.", "2+2=4", "Proximal SFT keeps the policy near the old one."]


def char_model(name: str):
    """A `HEADS` model over the character tokenizer's vocabulary (with TRL's fused head), and the tokenizer."""
    from psft.data.tiny import make_char_tokenizer

    tokenizer = make_char_tokenizer()
    model_cls, config_cls, extra = HEADS[name]
    return make(model_cls, config_cls, vocab=len(tokenizer), **extra), tokenizer


@pytest.mark.parametrize("name", ["llama", "gemma2_softcap"])
def test_the_training_forward_is_the_old_and_reference_pass_bit_for_bit(name):
    from psft.core.logprobs import policy_forward

    model = make(*HEADS[name][:2], **HEADS[name][2])
    inputs, labels = batch(model.config.vocab_size)
    trained = policy_forward(model, {**inputs, "labels": labels}).log_probs  # with gradient, as in training
    assert trained.requires_grad
    assert torch.equal(trained.detach().float(), label_log_probs(model, {**inputs, "labels": labels}))


def test_dpo_sequence_log_probs_are_the_label_log_probs_summed():
    """DPO scores with the training path (`label_log_probs`). Its batches have another shape than the one-row
    call here, so with 2 CPU threads (torch 2.15) the sums can differ in the last float32 bit: equal to rounding."""
    from psft.stages.preference_eval import pair_log_probs, tokenize_pair

    model, tokenizer = char_model("llama")
    rows = [
        {"prompt": [{"role": "user", "content": f"Q{i}?"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": f"no {i}"}]}
        for i in range(3)
    ]  # fmt: skip
    chosen, rejected = pair_log_probs(model, tokenizer, rows, batch_size=1)
    for i, row in enumerate(rows):
        pair = tokenize_pair(tokenizer, row)
        for side, got in (("chosen_ids", chosen[i]), ("rejected_ids", rejected[i])):
            ids = torch.tensor([pair["prompt_ids"] + pair[side]])
            labels = ids.clone()
            labels[:, : len(pair["prompt_ids"])] = -100
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
            torch.testing.assert_close(got, label_log_probs(model, inputs).sum(-1)[0], rtol=1e-6, atol=1e-5)


def full_distribution(model, ids: list[int], positions: slice):
    """`next_token_log_softmax` on one unpadded sequence at `positions` (one chunk)."""
    from psft.core.logprobs import next_token_log_softmax

    input_ids = torch.tensor([ids])
    scored = torch.zeros_like(input_ids, dtype=torch.bool)
    scored[0, positions] = True
    (_, logp), *rest = next_token_log_softmax(model, input_ids, torch.ones_like(input_ids), scored)
    assert not rest
    return logp


@pytest.mark.parametrize("name", ["llama", "gemma2_softcap", "cohere_logit_scale"])
def test_drift_stores_the_full_distribution_paths_log_probs_bit_for_bit(name, tmp_path):
    from safetensors.torch import load_file

    from psft.eval.drift import compute_reference_stats

    model, tokenizer = char_model(name)
    path = compute_reference_stats(model, tokenizer, TEXTS, tmp_path / "s.safetensors", top_k=5, batch_size=1)
    stats = load_file(str(path))
    start = 0
    for text in TEXTS:
        ids = tokenizer(text)["input_ids"]
        logp = full_distribution(model, ids, slice(0, len(ids) - 1))
        n = len(ids) - 1
        target = logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert torch.equal(stats["target_logprobs"][start : start + n], target)
        assert torch.equal(stats["topk_logprobs"][start : start + n], logp.topk(5).values)
        # and the label path (TRL's fused head) agrees up to its online log-sum-exp's rounding
        labels = torch.tensor([ids])
        fused = label_log_probs(model, {"input_ids": labels, "labels": labels})[0]
        torch.testing.assert_close(fused, target, atol=2e-5, rtol=1e-5)
        start += n
    assert start == len(stats["target_logprobs"])


@pytest.mark.parametrize("name", ["llama", "gemma2_softcap"])
def test_entropy_is_the_full_distribution_paths_entropy_bit_for_bit(name):
    from psft.core.logprobs import token_entropy
    from psft.eval.entropy import mean_token_entropy
    from psft.eval.generate import encode_prompt

    model, tokenizer = char_model(name)
    pairs = [("What is 2+2?", "4"), ([{"role": "user", "content": "Hi"}], "Hello there")]
    entropies = []
    for prompt, completion in pairs:
        prompt_ids = encode_prompt(tokenizer, prompt)
        ids = (
            prompt_ids
            + tokenizer(completion, add_special_tokens=False)["input_ids"]
            + [tokenizer.eos_token_id]
        )
        logp = full_distribution(model, ids, slice(len(prompt_ids) - 1, len(ids) - 1))
        entropies.append(token_entropy(logp).double())
        # the definition, on the model's own logits
        with torch.no_grad():
            own = (
                model(torch.tensor([ids]))
                .logits[0, len(prompt_ids) - 1 : len(ids) - 1]
                .float()
                .log_softmax(-1)
            )
        torch.testing.assert_close(entropies[-1].float(), -(own.exp() * own).sum(-1), atol=1e-5, rtol=1e-5)
    expected = float(torch.cat(entropies).sum()) / sum(len(e) for e in entropies)
    assert mean_token_entropy(model, tokenizer, pairs, batch_size=1) == expected
