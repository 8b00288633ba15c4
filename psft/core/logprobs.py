"""Per-token log-probs and entropy of a causal LM: the one home of both paths.

- `policy_forward` / `label_log_probs`: the log-prob of each label token, for the training step, the old policy,
  the reference and DPO's sequence log-probs (`psft.stages.preference_eval.pair_log_probs`), all the same computation, bit for bit.
- `next_token_log_softmax`: the whole next-token distribution at chosen positions, a chunk of positions at a time,
  for what needs more than the label's log-prob: drift's top-k and tail mass (`psft.eval.drift`) and token entropy
  (`token_entropy`, `psft.eval.entropy`). TRL's fused head returns only per-label values, so this path runs the
  same head (same weights, `head_scaling`'s softcap/scale convention) through a plain float32 log-softmax; on the
  label tokens it equals `label_log_probs` up to the fused kernel's rounding (its online logsumexp).

PSFT's ratio compares the training forward's log-probs with the old policy's, computed at the rollout start on the
same parameters. Any difference between the two computations (autocast or not, bf16 weights, another LM-head
kernel, tile width or softcap/scale convention) shows up as a ratio != 1 on an unchanged model, and the trust region
then clips noise. So both passes call `policy_forward`: the model's own forward, through whatever accelerate
wrapped around it (autocast under `bf16`/`fp16`, FSDP2's mixed-precision policy, DeepSpeed's bf16 weights), with TRL's
fused LM head (`trl.trainer.utils.add_fused_lm_head`, installed by `SFTTrainer`) that scores the labels without
building the full logits. The old and reference passes add only `torch.no_grad()` and eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers import PretrainedConfig
from trl.trainer.utils import add_fused_lm_head

from psft._compat import has_fused_head


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
    if not has_fused_head(causal_lm.forward):  # TRL's `_fused_forward` (psft._compat.FUSED_FORWARD)
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


# ---------------------------------------------------------------- the whole next-token distribution

LOGITS_CHUNK_ELEMENTS = 1 << 24
"""Logits scored at a time by default (positions x vocabulary, float32: 64 MB)."""


def next_token_logits(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[Tensor, Any]:
    """`model`'s plain forward (not TRL's fused head) on `inputs` without their labels: `(logits, output)` with the
    logits `(batch, seq - 1, vocab)` of each next-token target (`(batch, seq, vocab)` for `shift_labels`), in the
    model's dtype. One path for the trained model and the reference where the whole distribution is needed
    (`asft`, `eaft`); it builds the full logits, as a plain `transformers` forward does."""
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    output = model(**kwargs, use_cache=False)
    logits = output.logits
    return (logits if "shift_labels" in inputs else logits[:, :-1]), output


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside `model` (a PEFT model's base, LoRA layers included)."""
    return model.get_base_model() if is_peft_model(model) else model


def last_hidden_state(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """The backbone's final hidden states, without the output head (no full logits)."""
    backbone = _causal_lm(model).base_model
    return backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def head_log_softmax(model: torch.nn.Module, hidden: Tensor) -> Tensor:
    """float32 log-softmax of the model's next-token logits for `hidden` (`(..., d)`), with the head's own
    scaling (`logit_scale`, `logits_scaling`, final softcapping: `head_scaling`)."""
    causal_lm = _causal_lm(model)
    softcap, scale = head_scaling(causal_lm.config)
    logits = causal_lm.get_output_embeddings()(hidden).float()
    if scale != 1.0:
        logits.mul_(scale)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.sub_(logits.logsumexp(-1, keepdim=True))  # log-softmax in place: one chunk in memory


@torch.no_grad()
def next_token_log_softmax(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    positions: Tensor,
    rows: int | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """`(start, log_probs)` chunks of the float32 next-token log-softmax `(rows, vocab)` at the `positions`
    (a bool `(batch, seq)` mask; position i predicts token i + 1), in row-major order, `rows` positions at a
    time (None: as many as keep a chunk within `LOGITS_CHUNK_ELEMENTS`): the full logits are never built.
    Runs the model as it is (the caller sets eval mode)."""
    hidden = last_hidden_state(model, input_ids, attention_mask)
    hidden = hidden[positions.to(hidden.device)]  # (positions, d): the head runs on these only
    if rows is None:
        rows = max(1, LOGITS_CHUNK_ELEMENTS // _causal_lm(model).get_output_embeddings().out_features)
    for start in range(0, hidden.shape[0], rows):
        yield start, head_log_softmax(model, hidden[start : start + rows])


def token_entropy(log_probs: Tensor) -> Tensor:
    """Entropy (nats) of each distribution given as log-probs over the last dimension: -sum p log p."""
    return -(log_probs.exp() * log_probs).sum(-1)


OLD_LOG_PROBS = "old_log_probs"


REF_LOG_PROBS = "ref_log_probs"
