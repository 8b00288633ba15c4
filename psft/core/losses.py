"""Per-token objectives, registered by name.

Each objective is a small pure function of per-token tensors of shape (batch, seq): it takes the
log-probabilities of the demonstration tokens under the model being trained (`log_probs`, with grad),
a 0/1 `mask` of the loss tokens, and whatever else it needs (e.g. `old_log_probs`; objectives that need the whole
next-token distribution, `asft` and `eaft`, read the `logits` `(batch, seq, vocab)` aligned with `log_probs` and
work on them in chunks of loss positions), and returns the
**unreduced** per-token loss, zero where `mask` is 0, plus per-token diagnostics. Reduction is separate
(`token_mean`), so one aggregation serves every objective: the exact mean over all loss tokens of one
optimizer step, across gradient-accumulation micro-batches and processes.

The functions work outside the trainer:

    >>> out = psft_loss(log_probs, mask, old_log_probs=old, epsilon=0.2, epsilon_high=0.28)
    >>> loss = token_mean(out.per_token, mask.sum())
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

# Loss positions per chunk when a per-token quantity needs the whole next-token distribution: each chunk upcasts
# (chunk, vocabulary) logits to float32, e.g. 1024 x 152k x 4 bytes = 0.6 GB for Qwen's vocabulary.
VOCAB_CHUNK = 1024
# LLaMA-Factory's EAFT (`_eaft_cross_entropy`): entropy of the top-20 logits renormalised, divided by 3.0 (~ ln 20)
EAFT_TOPK, EAFT_TOPK_DIVISOR = 20, 3.0


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


# ------------------------------------------------------------------ whole-distribution helpers
def _chunked_rows(fn: Callable[..., Tensor], mask: Tensor, chunk_size: int, *tensors: Tensor) -> Tensor:
    """`fn(*rows)` on the loss positions of `tensors` (each `(*mask.shape, vocab)`), in chunks of `chunk_size`
    positions, laid out like `mask` (zeros elsewhere). Each chunk runs under activation checkpointing, so autograd
    keeps only its inputs: the float32 (chunk, vocab) temporaries are recomputed in backward, never stored for all
    positions at once."""
    where = mask.bool()
    rows = [t[where] for t in tensors]  # (loss positions, vocab), in the tensors' own dtype
    if rows[0].shape[0] == 0:
        return tensors[0].new_zeros(mask.shape, dtype=torch.float32) + 0 * tensors[0].sum()
    chunks = zip(*(r.split(chunk_size) for r in rows), strict=True)
    grad = torch.is_grad_enabled() and any(r.requires_grad for r in rows)
    values = [checkpoint(fn, *c, use_reentrant=False) if grad else fn(*c) for c in chunks]
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(
        where, torch.cat(values)
    )


def _label_log_prob_rows(logits: Tensor, labels: Tensor) -> Tensor:
    return logits.float().log_softmax(-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def label_log_probs_from_logits(
    logits: Tensor, labels: Tensor, mask: Tensor, chunk_size: int = VOCAB_CHUNK
) -> Tensor:
    """Float32 log-probs of `labels` under `logits` `(batch, seq, vocab)` at the loss positions (`mask`), 0
    elsewhere; differentiable, chunked over positions (`_chunked_rows`)."""
    labels = labels.clamp(min=0).unsqueeze(-1).expand(*labels.shape, 1)
    return _chunked_rows(
        lambda z, y: _label_log_prob_rows(z, y.squeeze(-1)), mask, chunk_size, logits, labels
    )


def _kl_rows(logits: Tensor, ref_logits: Tensor) -> Tensor:
    log_p, log_q = logits.float().log_softmax(-1), ref_logits.float().log_softmax(-1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def full_vocab_kl(logits: Tensor, ref_logits: Tensor, mask: Tensor, chunk_size: int = VOCAB_CHUNK) -> Tensor:
    """Exact KL(ref || pi) = sum_v q_v (log q_v - log p_v) over the whole vocabulary at every loss position, in
    float32 (`(batch, seq)`, 0 off the loss positions). Differentiable in `logits` only (the reference is a
    constant): its gradient in the logits is p - q. Chunked over positions (`_chunked_rows`)."""
    return _chunked_rows(_kl_rows, mask, chunk_size, logits, ref_logits.detach())


def _entropy_rows(logits: Tensor) -> Tensor:
    log_p = logits.float().log_softmax(-1)
    return -(log_p.exp() * log_p).sum(-1)


def _topk_entropy_rows(logits: Tensor, k: int) -> Tensor:
    return _entropy_rows(logits.float().topk(min(k, logits.shape[-1]), dim=-1).values)


@torch.no_grad()
def full_entropy(logits: Tensor, mask: Tensor, chunk_size: int = VOCAB_CHUNK) -> Tensor:
    """Entropy (nats) of the whole next-token distribution at each loss position, float32, without gradient."""
    return _chunked_rows(_entropy_rows, mask, chunk_size, logits)


@torch.no_grad()
def topk_entropy(logits: Tensor, mask: Tensor, k: int = EAFT_TOPK, chunk_size: int = VOCAB_CHUNK) -> Tensor:
    """Entropy (nats) of the `k` largest logits renormalised (LLaMA-Factory's EAFT estimate), without gradient."""
    return _chunked_rows(lambda z: _topk_entropy_rows(z, k), mask, chunk_size, logits)


# ------------------------------------------------------------------ baselines with a reference
def _low_var_kl(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """verl's `kl_penalty(logprob, ref_logprob, "low_var_kl")` (core_algos.py, also in the PSFT authors' fork): k3 =
    exp(x) - x - 1 on x = ref - logprob clamped to [-20, 20], the result clamped to [-10, 10]. Per token, >= 0; it
    estimates KL(pi || ref) from tokens drawn from pi. Where a clamp binds the gradient is 0, as in verl."""
    x = (ref_log_probs - log_probs).clamp(-20.0, 20.0)
    return (x.exp() - x - 1.0).clamp(-10.0, 10.0)


@register_loss("sft_kl", tensors=("ref_log_probs",), hparams=("beta",))
def sft_kl_loss(log_probs: Tensor, mask: Tensor, ref_log_probs: Tensor, beta: float = 0.5) -> LossOutput:
    """SFT-KL as the PSFT authors ran it (their verl fork, `use_kl_loss` with `kl_loss_type=low_var_kl`):
    NLL + beta * low_var_kl(log pi, log ref) per demonstration token, token-mean like the NLL.

    The k3 estimate is evaluated on the data's tokens; its gradient per token is beta * (1 - p_ref / p) (0 where
    verl's clamps bind), pulling back tokens that rose above the reference.
    """
    kl = _low_var_kl(log_probs, ref_log_probs)
    return LossOutput((-log_probs + beta * kl) * mask, {"kl_ref": kl.detach()})


@register_loss("asft", tensors=("logits", "ref_logits"), hparams=("asft_lambda",))
def asft_loss(
    log_probs: Tensor,
    mask: Tensor,
    logits: Tensor,
    ref_logits: Tensor,
    asft_lambda: float = 0.1,
    chunk_size: int = VOCAB_CHUNK,
) -> LossOutput:
    """ASFT (arXiv 2509.23753) as its authors' code computes it (zhuchichi56/ASFT train_v2.py mode "asft";
    LLaMA-Factory `asft_loss_func`): DFT + lambda * KL(ref || pi), the KL exact over the whole vocabulary at every
    loss position from the reference's next-token distribution.

        loss_t = -sg(p_t) * log p_t + lambda * sum_v q_v(t) * (log q_v(t) - log p_v(t))

    `logits`/`ref_logits` are the model's and the reference's next-token logits `(batch, seq, vocab)` aligned with
    `log_probs`; the reference is constant. Gradient in the logits per position: DFT's plus lambda * (p - q).
    """
    kl = full_vocab_kl(logits, ref_logits, mask, chunk_size)
    dft = -log_probs.exp().detach() * log_probs
    return LossOutput((dft + asft_lambda * kl) * mask, {"kl_ref": kl.detach()})


@register_loss("asft_label_kl", tensors=("ref_log_probs",), hparams=("asft_lambda",))
def asft_label_kl_loss(
    log_probs: Tensor, mask: Tensor, ref_log_probs: Tensor, asft_lambda: float = 0.1
) -> LossOutput:
    """A cheap stand-in for ASFT (not the published objective): DFT + lambda * k3(log pi - log ref) on the
    demonstration token only, k3(x) = exp(x) - x - 1.

    k3 on x = log(pi / ref) estimates KL(ref || pi) only for tokens drawn from the reference; on the data's tokens it
    is a label-token proxy whose gradient (-p + lambda * (p / p_ref - 1) per token) differs from ASFT's full-vocabulary
    KL gradient. Its merit: it needs only the reference's label log-probs (the precomputed table, no second forward).
    """
    x = log_probs - ref_log_probs
    kl = x.exp() - x - 1.0
    dft = -log_probs.exp().detach() * log_probs
    return LossOutput((dft + asft_lambda * kl) * mask, {"kl_ref": kl.detach()})


@register_loss("eaft", tensors=("logits",), hparams=("eaft_alpha", "eaft_entropy"))
def eaft_loss(
    log_probs: Tensor,
    mask: Tensor,
    logits: Tensor,
    eaft_alpha: float = 1.0,
    eaft_entropy: str = "topk",
    chunk_size: int = VOCAB_CHUNK,
) -> LossOutput:
    """EAFT (entropy-adaptive fine-tuning, arXiv 2601.02151): NLL weighted per token by sg(H~)^alpha.

    `eaft_entropy="topk"` (default, LLaMA-Factory's `_eaft_cross_entropy`, added by an EAFT author): H~ is the
    entropy of the 20 largest logits renormalised, divided by 3.0 (so H~ <= ln(20) / 3 < 1). `"full"`: H~ is the
    entropy of the whole distribution divided by ln(vocabulary size). The two are different weights: where the top
    20 tokens hold most of the mass (real vocabularies), the full one is several times smaller and orders tokens
    differently (a long flat tail raises it, not the top-20 one). Confident positions where the demonstration
    disagrees with the model (the authors' "confident conflicts") get little gradient. Gradient per token: -H~^alpha.
    """
    if eaft_entropy == "topk":
        entropy = topk_entropy(logits, mask, EAFT_TOPK, chunk_size) / EAFT_TOPK_DIVISOR
    elif eaft_entropy == "full":
        entropy = full_entropy(logits, mask, chunk_size) / math.log(logits.shape[-1])
    else:
        raise ValueError(f"eaft_entropy must be 'topk' or 'full', got {eaft_entropy!r}")
    weight = entropy.to(log_probs.dtype).pow(eaft_alpha) * mask
    return LossOutput(-weight * log_probs * mask, {"eaft_weight": weight})
