"""Ways to compute the old policy's per-token log-probs of one micro-batch, to see what lowers the floor.

All give the same numbers on the loss tokens (zero elsewhere); `bench_psft.py` times each one relative to
`trainer`, the trainer's own `_old_log_probs`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE


def trainer_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """What PSFTTrainer runs on each micro-batch of a rollout (`_log_probs`; `_old_log_probs` before it)."""
    if hasattr(trainer, "_log_probs"):
        return trainer._log_probs(trainer.model_wrapped, mb)
    return trainer._old_log_probs(mb)


def inference_mode_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The fused LM head (log-probs, entropy, top-1) under `torch.inference_mode` instead of `no_grad`."""
    with torch.inference_mode():
        inputs = trainer._prepare_inputs(mb)
        return trainer.model(**inputs, use_cache=False, fused_lm_head=True).log_probs.float()


def log_probs_only_pass(trainer: Any, mb: dict[str, Any]) -> Tensor:
    """The backbone, then the chunked log-softmax on the loss positions only, without entropy or top-1.
    For heads without logit scaling or softcapping (Llama, the benchmark's models)."""
    with torch.inference_mode():
        inputs = trainer._prepare_inputs(mb)
        labels = inputs.pop("labels")[:, 1:]
        model = trainer.model
        hidden = model.base_model(**inputs, use_cache=False).last_hidden_state[:, :-1]
        mask = labels != -100
        head = model.get_output_embeddings()
        # temperature 1, no softcapping, logit scale 1, no optional outputs: log-probs only
        args = (1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, ())
        picked, *_ = ChunkedLogProbFunction.apply(hidden[mask], head.weight, head.bias, labels[mask], *args)
        return hidden.new_zeros(mask.shape).masked_scatter(mask, picked).float()


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
    "inference_mode": inference_mode_pass,
    "log_probs_only": log_probs_only_pass,
    "full_logits": full_logits_pass,
}
