"""Per-token log-probs of a causal LM on its label tokens: one path for the training step, the old policy and the
reference.

PSFT's ratio compares the training forward's log-probs with the old policy's, computed at the rollout start on the
same parameters. Any difference between the two computations (autocast or not, bf16 weights, another LM-head
kernel, tile width or softcap/scale convention) shows up as a ratio != 1 on an unchanged model, and the trust region
then clips noise. So both passes call `policy_forward`: the model's own forward, through whatever accelerate
wrapped around it (autocast under `bf16`/`fp16`, FSDP2's mixed-precision policy, DeepSpeed's bf16 weights), with TRL's
fused LM head (`trl.trainer.utils.add_fused_lm_head`, installed by `SFTTrainer`) that scores the labels without
building the full logits. The old and reference passes add only `torch.no_grad()` and eval mode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def policy_forward(model: torch.nn.Module, inputs: dict[str, Any]) -> Any:
    """`model`'s forward with TRL's fused LM head on `inputs` (its keyword arguments with `labels` or
    `shift_labels`): a `trl.trainer.utils.FusedCausalLMOutput` with per-token `log_probs` (0 where the label is -100)."""
    return model(**inputs, use_cache=False, fused_lm_head=True)


@torch.no_grad()
def label_log_probs(model: torch.nn.Module, inputs: dict[str, Any]) -> Tensor:
    """Float32 log-probs `(batch, seq - 1)` of each next-token label (`(batch, seq)` for `shift_labels`), exactly as
    the training forward computes them at the same parameters; without gradient, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return policy_forward(model, inputs).log_probs.float()
    finally:
        model.train(was_training)
