"""EAFT (arXiv 2601.02151): NLL weighted by the token's normalised entropy to a power; hand-derived values."""

import math

import pytest
import torch
from trainer_support import TOKENIZER, make_trainer

from psft.losses import LOSSES, eaft_loss, sft_loss


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


LOG_P = [math.log(0.5), math.log(0.2), math.log(0.9)]
H = torch.tensor([0.25, 0.81, 0.5], dtype=torch.float64, requires_grad=True)  # normalised entropies
MASK = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)


def test_eaft_per_token_loss_and_gradient_match_hand_derivation():
    log_probs = _leaf(LOG_P)
    out = eaft_loss(log_probs, MASK, normalized_entropy=H, eaft_alpha=0.5)
    # loss = -sqrt(H) * log p on loss tokens: sqrt(.25) = .5, sqrt(.81) = .9
    expected = torch.tensor([-0.5 * LOG_P[0], -0.9 * LOG_P[1], 0.0], dtype=torch.float64)
    torch.testing.assert_close(out.per_token, expected)
    out.per_token.sum().backward()
    # d/dlogp = -H^alpha; the entropy weight is a constant (stop-gradient)
    torch.testing.assert_close(log_probs.grad, torch.tensor([-0.5, -0.9, 0.0], dtype=torch.float64))
    assert H.grad is None
    assert "eaft" in LOSSES and LOSSES["eaft"].hparams == ("eaft_alpha",)


def test_eaft_with_alpha_zero_is_sft_and_full_entropy_is_sft():
    for h, alpha in ((H.detach(), 0.0), (torch.ones(3, dtype=torch.float64), 1.0)):
        a, b = _leaf(LOG_P), _leaf(LOG_P)
        eaft_loss(a, MASK, normalized_entropy=h, eaft_alpha=alpha).per_token.sum().backward()
        sft_loss(b, MASK).per_token.sum().backward()
        assert torch.equal(a.grad, b.grad)


def test_trainer_weights_each_token_by_its_entropy_over_the_whole_vocabulary(tmp_path):
    """The loss the trainer computes equals one built from plain logits: -H/ln(V) * log p, token-mean."""
    torch.set_num_threads(1)
    trainer = make_trainer(tmp_path, loss_type="eaft", eaft_alpha=1.0, max_steps=1)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    with torch.no_grad():
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].double(), batch["labels"][:, 1:]
    mask = labels.ne(-100)
    log_softmax = logits.log_softmax(-1)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1) / math.log(len(TOKENIZER))
    log_p = log_softmax.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    expected = (-entropy * log_p)[mask].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert 0 < entropy[mask].min() and entropy[mask].max() < 1
