"""Per-token objectives, registered by name.

Each objective is a small pure function of per-token tensors of shape (batch, seq): it takes the
log-probabilities of the demonstration tokens under the model being trained (`log_probs`, with grad),
a 0/1 `mask` of the loss tokens, and whatever else it needs (e.g. `old_log_probs`), and returns the
**unreduced** per-token loss, zero where `mask` is 0, plus per-token diagnostics. Reduction is separate
(`token_mean`), so one aggregation serves every objective: the exact mean over all loss tokens of one
optimizer step, across gradient-accumulation micro-batches and processes.

The functions work outside the trainer:

    >>> out = psft_loss(log_probs, mask, old_log_probs=old, epsilon=0.2, epsilon_high=0.28)
    >>> loss = token_mean(out.per_token, mask.sum())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class LossOutput:
    """The unreduced loss of one objective and its per-token diagnostics (all shaped like `mask`)."""

    per_token: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LossSpec:
    """A registered objective: its function, the extra per-token tensors it reads from the batch, and the
    config fields passed to it as keyword arguments."""

    name: str
    fn: Callable[..., LossOutput]
    tensors: tuple[str, ...] = ()
    hparams: tuple[str, ...] = ()


LOSSES: dict[str, LossSpec] = {}


def register_loss(
    name: str, *, tensors: tuple[str, ...] = (), hparams: tuple[str, ...] = ()
) -> Callable[[Callable[..., LossOutput]], Callable[..., LossOutput]]:
    """Register `fn(log_probs, mask, **tensors, **hparams) -> LossOutput` under `name`.

    `tensors` name the extra per-token inputs (e.g. `"old_log_probs"`); the trainer provides them.
    `hparams` name `PSFTConfig` fields passed through by the trainer.
    """

    def decorator(fn: Callable[..., LossOutput]) -> Callable[..., LossOutput]:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} is already registered")
        LOSSES[name] = LossSpec(name, fn, tensors, hparams)
        return fn

    return decorator


def get_loss(name: str) -> LossSpec:
    """The registered objective `name`; the error lists the known ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss_type {name!r}; registered: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def token_mean(per_token: Tensor, num_tokens: Tensor | int) -> Tensor:
    """Sum of the per-token loss divided by the number of loss tokens of the whole optimizer step.

    Pass the count over every micro-batch and process of the step (not this micro-batch's), so that
    gradient accumulation and data parallelism give the same gradient as one big batch.
    """
    return per_token.sum() / torch.as_tensor(num_tokens, device=per_token.device).clamp(min=1)


@register_loss("sft")
def sft_loss(log_probs: Tensor, mask: Tensor) -> LossOutput:
    """Negative log-likelihood of the demonstration tokens (plain SFT)."""
    return LossOutput(-log_probs * mask)


@register_loss("dft")
def dft_loss(log_probs: Tensor, mask: Tensor) -> LossOutput:
    """Dynamic Fine-Tuning (arXiv 2508.05629): NLL weighted by the token's own detached probability."""
    return LossOutput(-log_probs.exp().detach() * log_probs * mask)


@register_loss("psft", tensors=("old_log_probs",), hparams=("epsilon", "epsilon_high", "log_ratio_clip"))
def psft_loss(
    log_probs: Tensor,
    mask: Tensor,
    old_log_probs: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float = 0.28,
    log_ratio_clip: float = 20.0,
) -> LossOutput:
    """PSFT: PPO's clipped surrogate with advantage +1 on every demonstration token.

        r = exp(log_probs - old_log_probs),  loss = -min(r, clip(r, 1 - epsilon, 1 + epsilon_high))

    With A = +1 only the upper clip binds: a token with r > 1 + epsilon_high has constant loss and zero
    gradient; below 1 - epsilon the gradient still flows. At r = 1 the gradient equals the NLL gradient.
    The log-ratio is clamped to +-`log_ratio_clip` before `exp`, as verl does, so the ratio stays finite.
    """
    log_ratio = (log_probs - old_log_probs).clamp(-log_ratio_clip, log_ratio_clip)
    ratio = log_ratio.exp()
    clipped_ratio = ratio.clamp(1.0 - epsilon, 1.0 + epsilon_high)
    per_token = -torch.minimum(ratio, clipped_ratio) * mask
    metrics = {
        "ratio": ratio.detach(),
        "clip_high": (ratio.detach() > 1.0 + epsilon_high).to(ratio.dtype),
        "clip_low": (ratio.detach() < 1.0 - epsilon).to(ratio.dtype),
        # k3 estimator of KL(old || current): non-negative, low variance (Schulman, "Approximating KL")
        "approx_kl": (ratio - 1.0 - log_ratio).detach(),
    }
    return LossOutput(per_token, metrics)


def _k3(log_ratio: Tensor) -> Tensor:
    """Schulman's k3 KL estimator exp(x) - x - 1 for x = log(q/p) on tokens drawn from p: >= 0, low variance."""
    return log_ratio.exp() - log_ratio - 1.0


@register_loss("sft_kl", tensors=("ref_log_probs",), hparams=("beta",))
def sft_kl_loss(log_probs: Tensor, mask: Tensor, ref_log_probs: Tensor, beta: float = 0.5) -> LossOutput:
    """NLL + beta * KL(pi || ref), the KL estimated per demonstration token with k3 on log(ref / pi).

    The estimator is evaluated on the data's tokens (not samples of pi), as the paper's SFT-KL baseline does
    at token level; its gradient is (1 - p_ref / p) per token, pulling back tokens that rose above the reference.
    """
    kl = _k3(ref_log_probs - log_probs)
    return LossOutput((-log_probs + beta * kl) * mask, {"kl_ref": kl.detach()})


@register_loss("asft", tensors=("ref_log_probs",), hparams=("asft_lambda",))
def asft_loss(log_probs: Tensor, mask: Tensor, ref_log_probs: Tensor, asft_lambda: float = 0.1) -> LossOutput:
    """ASFT (arXiv 2509.23753): DFT + lambda * KL(ref || pi), the KL estimated per token with k3 on log(pi / ref).

    Its gradient per token is -p + lambda * (p / p_ref - 1).
    """
    kl = _k3(log_probs - ref_log_probs)
    dft = -log_probs.exp().detach() * log_probs
    return LossOutput((dft + asft_lambda * kl) * mask, {"kl_ref": kl.detach()})


@register_loss("eaft", tensors=("normalized_entropy",), hparams=("eaft_alpha",))
def eaft_loss(
    log_probs: Tensor, mask: Tensor, normalized_entropy: Tensor, eaft_alpha: float = 1.0
) -> LossOutput:
    """EAFT (entropy-adaptive fine-tuning, arXiv 2601.02151): NLL weighted by sg(H~)^alpha per token.

    H~ is the model's predictive entropy at that position divided by its maximum, so the weight is in [0, 1]:
    confident positions (low entropy) where the demonstration disagrees with the model, the "confident
    conflicts" the authors blame for forgetting, get little gradient; uncertain ones learn like SFT. The
    gradient per token is -H~^alpha (the weight is not differentiated). LLaMA-Factory estimates H from the
    top-20 logits and divides by ln 20; psft uses the exact entropy of the whole distribution (computed by the
    training forward's fused head anyway) divided by ln(vocabulary size): the same range and ordering.
    """
    weight = normalized_entropy.detach().clamp(0.0, 1.0).pow(eaft_alpha)
    return LossOutput(-weight * log_probs * mask, {"eaft_weight": weight})
