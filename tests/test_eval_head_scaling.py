"""Drift and entropy use the model's own next-token distribution: the head's logit scaling (Granite divides by
`logits_scaling`, Cohere multiplies by `logit_scale`) and softcapping (Gemma 2) included, without full logits."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
)

from psft.data.tiny import make_char_tokenizer
from psft.eval.drift import compute_reference_stats, measure_drift
from psft.eval.entropy import mean_token_entropy

TEXTS = ["the quick brown fox", "jumps over the lazy dog!", "PSFT keeps the model near its base."]
PAIRS = [("1+1=", "2"), ("reverse abc", "cba"), ("hello", "a longer completion")]


def tiny(kind: str, vocab: int):
    common = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    if kind == "granite":  # logits / 0.25: sharper than the unscaled head
        model = GraniteForCausalLM(GraniteConfig(logits_scaling=0.25, **common))
    elif kind == "cohere":  # logits * 4
        model = CohereForCausalLM(CohereConfig(logit_scale=4.0, **common))
    else:  # softcap 2 on strong logits
        model = Gemma2ForCausalLM(Gemma2Config(final_logit_softcapping=2.0, head_dim=8, **common))
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(20)
    return model.eval()


@pytest.fixture(scope="module", params=["granite", "cohere", "gemma2"])
def pair(request):
    torch.set_num_threads(1)
    tok = make_char_tokenizer()
    base = tiny(request.param, len(tok))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        torch.manual_seed(1)
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, tuned, tok


def full_logits_kl(base, tuned, tok) -> float:
    """Mean KL(base || tuned) from each model's own `.logits` (its forward applies the scaling)."""
    kls = []
    for text in TEXTS:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            p = base(ids).logits[0, :-1].float().log_softmax(-1)
            q = tuned(ids).logits[0, :-1].float().log_softmax(-1)
        kls.append((p.exp() * (p - q)).sum(-1))
    return torch.cat(kls).mean().item()


def test_exact_drift_equals_the_models_own_logits(pair, tmp_path, monkeypatch):
    from psft.core import logprobs

    base, tuned, tok = pair
    stats = compute_reference_stats(base, tok, TEXTS, tmp_path / "s.safetensors", top_k=10_000, chunk_size=5)
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 2 * 3 * len(tok))  # 6 positions a chunk
    result = measure_drift(tuned, stats, batch_size=2)
    assert result.exact
    assert result.kl == pytest.approx(full_logits_kl(base, tuned, tok), rel=1e-4, abs=1e-7)
    assert result.kl > 1e-4  # the scaling matters: an unscaled head would give another number


def test_entropy_equals_the_models_own_logits(pair, monkeypatch):
    base, _, tok = pair
    from psft.core import logprobs
    from psft.eval.generate import encode_prompt

    expected, count = 0.0, 0
    for prompt, completion in PAIRS:
        prompt_ids = encode_prompt(tok, prompt)
        ids = prompt_ids + tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            logp = base(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        entropy = -(logp.exp() * logp).sum(-1)[len(prompt_ids) - 1 : len(ids) - 1]
        expected, count = expected + entropy.sum().item(), count + entropy.numel()
    monkeypatch.setattr(logprobs, "LOGITS_CHUNK_ELEMENTS", 3 * len(tok))  # 3 positions per chunk
    assert mean_token_entropy(base, tok, PAIRS, batch_size=2) == pytest.approx(expected / count, rel=1e-5)
