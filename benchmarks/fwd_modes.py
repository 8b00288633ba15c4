"""Ways to compute the old policy's per-token log-probs of one micro-batch, and the plain forward they are held to.

`bench_psft.py` times each one relative to `trainer`, the trainer's own pass (`PSFTTrainer._log_probs`: the
training forward with TRL's fused LM head, no gradient, eval mode; `psft.core.logprobs`). `plain_forward` is the physical
floor: the same model's ordinary no-grad forward on the same micro-batch, logits and all, with nothing of ours.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from psft.core.logprobs import policy_forward


def trainer_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """What PSFTTrainer runs on each micro-batch of a rollout."""
    return trainer._log_probs(trainer.model, mb)


def fused_head_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """TRL's fused forward called directly (no eval-mode switch, input preparation or context managers): the
    trainer's pass minus its per-call overhead."""
    with torch.no_grad():
        return policy_forward(trainer.model, mb).log_probs


def inference_mode_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The trainer's pass under `torch.inference_mode` instead of `no_grad`."""
    with torch.inference_mode():
        return trainer._log_probs(trainer.model, mb)


def plain_forward_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The physical floor: the model's plain no-grad forward (full logits, no log-softmax, no labels)."""
    with torch.no_grad():
        inputs = {k: v for k, v in mb.items() if k not in ("labels", "shift_labels")}
        return trainer.model(**inputs, use_cache=False).logits


def full_logits_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The naive way: full logits, log-softmax over the vocabulary, gather the labels."""
    with torch.no_grad():
        labels = mb["labels"][:, 1:]
        inputs = {k: v for k, v in mb.items() if k not in ("labels", "shift_labels")}
        logits = trainer.model(**inputs, use_cache=False).logits[:, :-1].float()
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * (labels != -100)


FORWARD_MODES: dict[str, Callable[[Any, dict[str, Any]], Tensor]] = {
    "trainer": trainer_pass,
    "fused_head": fused_head_pass,
    "inference_mode": inference_mode_pass,
    "plain_forward": plain_forward_pass,
    "full_logits": full_logits_pass,
}
