"""Per-token log-probs of a causal LM on its label tokens: the old policy's and the reference's pass.

The training forward needs TRL's fused LM head with entropy and top-1 (for metrics) and runs it on every
position where no Triton kernel exists (CPU). The old and reference passes need only the log-probs of the
loss tokens, so this runs the backbone, keeps the positions whose next-token label is not -100, and scores
only those with TRL's chunked log-softmax (`trl.kernels.ChunkedLogProbFunction`): memory is bounded by
`loss tokens x chunk_size` whatever the vocabulary, and the full logits are never built.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import Tensor
from transformers import PretrainedConfig, PreTrainedModel
from trl.kernels import ChunkedLogProbFunction

LOGPROB_CHUNK_SIZE = 32768
"""Vocabulary columns scored at a time on CUDA and XPU: the tile width of TRL's fused head and Triton kernel."""
CPU_LOGPROB_CHUNK_SIZE = 1024
"""Columns at a time elsewhere (CPU, torch ops on each tile): a tile that stays in cache. Against 32768 on CPU,
measured 1.02-1.17x faster and about 10x less memory (`benchmarks/README.md`)."""


def chunk_size(device: torch.device) -> int:
    """Vocabulary columns per tile for a head on `device`."""
    return LOGPROB_CHUNK_SIZE if device.type in ("cuda", "xpu") else CPU_LOGPROB_CHUNK_SIZE


def head_scaling(config: PretrainedConfig) -> tuple[float | None, float]:
    """`(final_logit_softcapping, logit_scale)` of a model's LM head: logits are `scale * h @ W.T`, then
    softcapped. Reads the same config fields, with the same meaning, as TRL 1.16's `add_fused_lm_head`."""
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


def uses_own_forward(model: torch.nn.Module) -> bool:
    """Whether `model`'s forward does more than backbone + LM head (PEFT prompt learning edits the inputs):
    such models must be run through their own forward."""
    peft_config = getattr(model, "active_peft_config", None)
    return bool(getattr(peft_config, "is_prompt_learning", False))


@torch.no_grad()
def label_log_probs(
    model: torch.nn.Module, inputs: dict[str, Any], temperature: float = 1.0, chunk: int | None = None
) -> Tensor:
    """Log-probs `(batch, seq - 1)` of each next-token label under `model` (float32, 0 where the label is
    -100); `(batch, seq)` for pre-shifted `shift_labels`. `model` is a causal LM or a PEFT model around one
    (LoRA layers live inside it); `inputs` are its forward's keyword arguments with `labels`. `chunk`:
    vocabulary columns per tile (default `chunk_size` of the head's device)."""
    inputs = dict(inputs)
    labels, shift_labels = inputs.pop("labels", None), inputs.pop("shift_labels", None)
    causal_lm: PreTrainedModel = model.get_base_model() if is_peft_model(model) else model
    hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    head = causal_lm.get_output_embeddings()
    targets = targets.to(head.weight.device)
    mask = targets != -100
    softcap, scale = head_scaling(causal_lm.config)
    picked, *_ = ChunkedLogProbFunction.apply(
        hidden.to(head.weight.device)[mask],
        head.weight,
        head.bias,
        targets[mask],
        temperature,
        chunk or chunk_size(head.weight.device),
        softcap,
        scale,
        (),  # no entropy, top-1 or other extras: log-probs only
    )
    return torch.zeros(mask.shape, device=mask.device).masked_scatter(mask, picked.float())
