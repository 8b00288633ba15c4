"""Ways to compute the old policy's per-token log-probs of one micro-batch, to see what lowers the floor.

All give the same numbers on the loss tokens (zero elsewhere); `bench_psft.py` times each one relative to
`trainer`, the trainer's own pass (`PSFTTrainer._log_probs`: `psft.logprobs.label_log_probs`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from psft.logprobs import LOGPROB_CHUNK_SIZE, label_log_probs


def trainer_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """What PSFTTrainer runs on each micro-batch of a rollout: log-probs of the loss positions only."""
    return trainer._log_probs(trainer.model, mb)


def fused_head_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """TRL's fused LM head as the training forward uses it (log-probs, entropy and top-1; on devices without
    Triton it scores every position). The trainer's old pass before psft.logprobs."""
    with torch.no_grad():
        inputs = trainer._prepare_inputs(mb)
        return trainer.model(**inputs, use_cache=False, fused_lm_head=True).log_probs.float()


def inference_mode_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The trainer's pass under `torch.inference_mode` instead of `no_grad`."""
    with torch.inference_mode():
        return label_log_probs(trainer.model, trainer._prepare_inputs(mb))


def gpu_tiles_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The trainer's pass with the tile width it uses on CUDA (32768 columns) wherever it runs: on CPU,
    against the trainer's 1024-column tiles."""
    with torch.no_grad():
        return label_log_probs(trainer.model, trainer._prepare_inputs(mb), chunk=LOGPROB_CHUNK_SIZE)


def full_logits_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The naive way: full logits, log-softmax over the vocabulary, gather the labels."""
    with torch.inference_mode():
        inputs = trainer._prepare_inputs(mb)
        labels = inputs.pop("labels")[:, 1:]
        logits = trainer.model(**inputs, use_cache=False).logits[:, :-1].float()
        mask = labels != -100
        picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return picked * mask


FORWARD_MODES: dict[str, Callable[[Any, dict[str, Any]], Tensor]] = {
    "trainer": trainer_pass,
    "fused_head": fused_head_pass,
    "inference_mode": inference_mode_pass,
    "gpu_tiles": gpu_tiles_pass,
    "full_logits": full_logits_pass,
}
