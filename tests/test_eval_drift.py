"""Drift from the base: zero for the same model, positive after a change, exact KL equals brute force."""

from __future__ import annotations

import copy

import pytest
import torch

from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.errors import UserError
from psft.eval.drift import compute_reference_stats, measure_drift

TEXTS = [
    "the quick brown fox",
    "jumps over the lazy dog!",
    "a" * 30,
    "x",
    "PSFT keeps the model near its base.",
]


@pytest.fixture(scope="module")
def models():
    torch.set_num_threads(1)
    tok = make_char_tokenizer()
    base = make_tiny_llama(tok, seed=1).eval()
    with torch.no_grad():  # sharper than the near-uniform random init, so top-k matters
        base.lm_head.weight.mul_(8)
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return base, tuned, tok


def brute_force(base, tuned, tok) -> tuple[float, float]:
    """Mean KL(base || tuned) and log-prob change from full logits, one text at a time."""
    kls, dlogp = [], []
    for text in TEXTS:
        ids = torch.tensor([tok(text)["input_ids"]])
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            p = base(ids).logits[0, :-1].log_softmax(-1)
            q = tuned(ids).logits[0, :-1].log_softmax(-1)
        kls.append((p.exp() * (p - q)).sum(-1))
        target = ids[0, 1:, None]
        dlogp.append((q.gather(-1, target) - p.gather(-1, target))[:, 0])
    return torch.cat(kls).mean().item(), torch.cat(dlogp).mean().item()


def test_drift_is_zero_for_the_base_itself(models, tmp_path):
    base, _, tok = models
    stats = compute_reference_stats(
        base, tok, TEXTS, tmp_path / "s.safetensors", top_k=8, batch_size=2, chunk_size=4
    )
    result = measure_drift(base, stats, batch_size=3, chunk_size=5)
    assert abs(result.kl) < 1e-5 and abs(result.logprob_change) < 1e-5
    assert result.num_tokens == sum(len(t) - 1 for t in TEXTS) and not result.exact


def test_exact_kl_equals_brute_force_and_top_k_is_a_lower_bound(models, tmp_path):
    base, tuned, tok = models
    kl, dlogp = brute_force(base, tuned, tok)
    exact_stats = compute_reference_stats(
        base, tok, TEXTS, tmp_path / "all.safetensors", top_k=10_000, batch_size=2, chunk_size=3
    )
    exact = measure_drift(tuned, exact_stats, batch_size=2, chunk_size=7)
    assert exact.exact and exact.top_k == len(tok)
    assert exact.kl == pytest.approx(kl, rel=1e-4) and exact.logprob_change == pytest.approx(dlogp, rel=1e-4)
    assert exact.kl > 1e-3 and exact.logprob_change != 0
    approx = measure_drift(
        tuned, compute_reference_stats(base, tok, TEXTS, tmp_path / "k4.safetensors", top_k=4)
    )
    assert 0 < approx.kl <= exact.kl + 1e-6
    assert approx.logprob_change == pytest.approx(dlogp, rel=1e-4)  # target log-probs are always exact


def test_stats_file_errors(models, tmp_path):
    base, _, tok = models
    with pytest.raises(UserError, match="drift stats file not found"):
        measure_drift(base, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a tensor file")
    with pytest.raises(UserError, match="not a safetensors file"):
        measure_drift(base, tmp_path / "junk.safetensors")
    stats = compute_reference_stats(base, tok, TEXTS[:2], tmp_path / "s.safetensors")
    other = make_tiny_llama(make_char_tokenizer("abc"))
    with pytest.raises(UserError, match="vocabulary of 104"):
        measure_drift(other, stats)
