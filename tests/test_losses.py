"""The objectives against hand-derived per-token values and gradients."""

import math

import pytest
import torch

from psft.core.losses import LOSSES, dft_loss, get_loss, psft_loss, register_loss, sft_loss, token_mean

EPS_LOW, EPS_HIGH = 0.2, 0.28


def _leaf(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_psft_per_token_loss_and_gradient_match_hand_derivation():
    # ratios: 0.5 (below 1-eps: still gets gradient), 1.0 (SFT), 1.2 (inside), 1.5 (above 1+eps_high: clipped),
    # and a masked position with a huge ratio that must contribute nothing.
    ratios = torch.tensor([0.5, 1.0, 1.2, 1.5, 3.0], dtype=torch.float64)
    old = torch.tensor([-1.0, -2.0, -0.5, -3.0, -1.0], dtype=torch.float64)
    log_probs = _leaf((old + ratios.log()).tolist())
    mask = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)

    out = psft_loss(log_probs, mask, old_log_probs=old, epsilon=EPS_LOW, epsilon_high=EPS_HIGH)
    out.per_token.sum().backward()

    # L_t = -min(r, clip(r, 1-eps_low, 1+eps_high)); dL/dlogp = -r where r <= 1+eps_high, else 0.
    expected_loss = [-0.5, -1.0, -1.2, -(1 + EPS_HIGH), 0.0]
    expected_grad = [-0.5, -1.0, -1.2, 0.0, 0.0]
    torch.testing.assert_close(out.per_token, torch.tensor(expected_loss, dtype=torch.float64))
    torch.testing.assert_close(log_probs.grad, torch.tensor(expected_grad, dtype=torch.float64))
    assert log_probs.grad[3].item() == 0.0  # exactly zero, not small
    torch.testing.assert_close(out.metrics["clip_high"], torch.tensor([0.0, 0, 0, 1, 1], dtype=torch.float64))
    torch.testing.assert_close(out.metrics["clip_low"], torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    k3 = ratios - 1 - ratios.log()
    torch.testing.assert_close(out.metrics["approx_kl"], k3)


def test_psft_at_ratio_one_has_the_sft_gradient():
    log_probs = _leaf([-0.3, -2.5, -7.0])
    mask = torch.ones(3, dtype=torch.float64)
    psft_loss(log_probs, mask, old_log_probs=log_probs.detach()).per_token.sum().backward()
    psft_grad = log_probs.grad.clone()
    log_probs.grad = None
    sft_loss(log_probs, mask).per_token.sum().backward()
    assert torch.equal(psft_grad, log_probs.grad)


def test_psft_log_ratio_is_clamped_so_the_ratio_stays_finite():
    log_probs = _leaf([0.0, -1000.0])
    old = torch.tensor([-1000.0, 0.0], dtype=torch.float64)
    out = psft_loss(log_probs, torch.ones(2, dtype=torch.float64), old_log_probs=old, log_ratio_clip=20.0)
    assert torch.isfinite(out.per_token).all()
    assert out.metrics["ratio"][0].item() == pytest.approx(math.exp(20.0))
    assert out.metrics["ratio"][1].item() == pytest.approx(math.exp(-20.0))
    out.per_token.sum().backward()
    assert torch.isfinite(log_probs.grad).all()


def test_sft_and_dft_per_token_values_and_gradients():
    log_probs = _leaf([-0.1, -1.0, -4.0])
    mask = torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    sft = sft_loss(log_probs, mask)
    torch.testing.assert_close(sft.per_token, torch.tensor([0.1, 1.0, 0.0], dtype=torch.float64))
    sft.per_token.sum().backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([-1.0, -1.0, 0.0], dtype=torch.float64))

    log_probs.grad = None
    dft = dft_loss(log_probs, mask)
    p = log_probs.detach().exp()
    torch.testing.assert_close(dft.per_token, -p * log_probs.detach() * mask)
    dft.per_token.sum().backward()
    # d/dlogp of -sg(p) * logp is -p
    torch.testing.assert_close(log_probs.grad, -p * mask)


def test_token_mean_divides_by_the_given_count_not_the_local_one():
    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    assert token_mean(per_token, 3).item() == pytest.approx(2.0)
    assert token_mean(per_token, torch.tensor(6)).item() == pytest.approx(1.0)
    assert token_mean(torch.zeros(2, 2), 0).item() == 0.0  # no loss tokens: a finite zero


def test_registry_lists_the_objectives_and_rejects_duplicates_and_unknown_names():
    assert {"sft", "psft", "dft"} <= set(LOSSES)
    assert get_loss("psft").tensors == ("old_log_probs",)
    assert set(get_loss("psft").hparams) == {"epsilon", "epsilon_high", "log_ratio_clip"}
    with pytest.raises(ValueError, match="already registered"):
        register_loss("sft")(sft_loss)
    with pytest.raises(ValueError, match="registered: asft, asft_label_kl, dft, eaft, psft, sft, sft_kl"):
        get_loss("nope")
