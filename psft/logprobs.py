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
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers import PretrainedConfig
from trl.trainer.utils import add_fused_lm_head


def head_scaling(config: PretrainedConfig) -> tuple[float | None, float]:
    """`(final_logit_softcapping, logit_scale)` of a model's LM head: logits are `scale * h @ W.T`, then
    softcapped. Reads the same config fields, with the same meaning, as TRL 1.16's `add_fused_lm_head` (for code
    that needs the full distribution, e.g. `psft.eval.drift`)."""
    config = config.get_text_config()
    softcap = getattr(config, "final_logit_softcapping", None)
    # multipliers (Cohere, Falcon-H1, Muse Glimmer)
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        scale = getattr(config, name, None)
        if scale is not None:
            return softcap, scale
    divisor = getattr(config, "logits_scaling", None)  # Granite and MiniCPM3 divide, HyperCLOVA X multiplies
    if divisor is not None:
        return softcap, divisor if config.model_type == "hyperclovax" else 1 / divisor
    return softcap, 1.0


def ensure_fused_head(model: torch.nn.Module) -> None:
    """Install TRL's fused LM head on `model` (on its base model under PEFT) unless it has one: models that
    SFTTrainer, DPOTrainer or GRPOTrainer prepared do; a model fresh from `from_pretrained` does not. Detects
    TRL 1.16's patch by its function (`_fused_forward`, kept under `functools.wraps` and accelerate's wrappers)."""
    causal_lm = model.get_base_model() if is_peft_model(model) else model
    forward = getattr(causal_lm.forward, "__func__", causal_lm.forward)
    while forward is not None:
        if getattr(getattr(forward, "__code__", None), "co_name", "") == "_fused_forward":
            return
        forward = getattr(forward, "__wrapped__", None)
    add_fused_lm_head(causal_lm)


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
