"""`PSFTConfig`: TRL's `SFTConfig` plus the PSFT objective and its old-policy schedule."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

from trl import SFTConfig

from psft.core.losses import get_loss
from psft.errors import UserError

# TRL's name for plain SFT; we accept it as an alias of "sft".
LOSS_ALIASES = {"nll": "sft"}


@dataclass
class PSFTConfig(SFTConfig):
    r"""
    Configuration for [`PSFTTrainer`]: every field of TRL's `SFTConfig` (and so of `TrainingArguments`), plus
    the ones below. YAML and command-line flags come for free through `trl.TrlParser`.

    The paper's runs (arXiv 2508.17784, Qwen2.5-7B-Instruct, 8 GPUs) used a rollout of 256 prompts split in
    mini-batches of 32 (`mini_batches_per_rollout=8`), `epsilon=0.2`, `epsilon_high=0.28`, learning rate 1e-6
    with 10 warm-up steps then constant, weight decay 0.1, grad-norm clip 1.0. Their SFT baseline is
    `mini_batches_per_rollout=1` (identical to SFT) at learning rate 2e-5.

    Parameters:
        loss_type (`str`, *optional*, defaults to `"psft"`):
            Registered objective (see `psft.core.losses.LOSSES` and docs/baselines.md): `"psft"` (clipped surrogate
            against the old policy), `"sft"` (NLL; `"nll"` is an alias), `"dft"` (Dynamic Fine-Tuning), `"sft_kl"`,
            `"asft"` (DFT + full-vocabulary KL to the reference), `"asft_label_kl"` (its label-token estimate),
            `"eaft"`.
        epsilon (`float`, *optional*, defaults to `0.2`):
            Lower clip of the ratio, `1 - epsilon`. With advantage +1 it never stops a gradient; it only sets
            the `clip_ratio/low` metric.
        epsilon_high (`float`, *optional*, defaults to `0.28`):
            Upper clip of the ratio, `1 + epsilon_high`: tokens whose probability already rose past it since
            the rollout started get zero gradient. This is PSFT's trust region.
        log_ratio_clip (`float`, *optional*, defaults to `20.0`):
            The log-ratio is clamped to `[-log_ratio_clip, log_ratio_clip]` before `exp`, as in verl.
        mini_batches_per_rollout (`int`, *optional*, defaults to `8`):
            K: optimizer steps per rollout. The old policy's log-probs are computed on the whole rollout (K
            optimizer steps' worth of data) before its first step, then K steps are taken. K = 1 with one
            rollout epoch is exactly SFT.
        rollout_epochs (`int`, *optional*, defaults to `1`):
            Passes over each rollout (PPO's `ppo_epochs`), each of K optimizer steps against the same old policy.
        old_policy (`str`, *optional*, defaults to `"rollout"`):
            `"rollout"`: the old policy is the model at the start of each rollout (PSFT). `"fixed"`: it is the
            initial model for the whole run (the paper's "no refresh" ablation, which did badly).
        sft_warmup_steps (`int`, *optional*, defaults to `0`):
            Plain SFT optimizer steps before the objective takes over ("PSFT-warm-up" in the paper).
        beta (`float`, *optional*, defaults to `0.5`):
            Weight of the KL to the reference in `loss_type="sft_kl"` (the paper's SFT-KL baseline uses 0.5).
        asft_lambda (`float`, *optional*, defaults to `0.1`):
            Weight of the KL to the reference in `loss_type="asft"` (the ASFT authors' default).
        eaft_alpha (`float`, *optional*, defaults to `1.0`):
            Exponent of the normalised entropy that weights each token's NLL in `loss_type="eaft"` (the EAFT
            authors' default).
        eaft_entropy (`str`, *optional*, defaults to `"topk"`):
            The entropy weighting `loss_type="eaft"`: `"topk"` is LLaMA-Factory's (added by an EAFT author), the
            entropy of the top-20 logits renormalised, divided by 3.0; `"full"` is the entropy of the whole
            distribution divided by ln(vocabulary size), a different weight (several times smaller on real
            vocabularies, with another ordering of tokens).
        disable_dropout (`bool`, *optional*, defaults to `True`):
            Turn off the model's dropout before training (every `torch.nn.Dropout` and the `attention_dropout` rate
            of HF attention layers), as TRL's DPO/GRPO trainers do, for every objective so comparisons stay fair. With
            dropout on, `psft`'s ratio compares a dropout-free old-policy pass with a training forward with dropout,
            so it is far from 1 on an unchanged model and the trust region clips noise (a warning says so).
        reference (`str`, *optional*, defaults to `"auto"`):
            Where the reference (initial) model's outputs (`sft_kl`, `asft`, `asft_label_kl`,
            `old_policy="fixed"`) come from, without a second model in memory by default: `"precompute"` computes
            the initial model's per-token log-probs on the training data once before training and stores them (4
            bytes a token, cached in `output_dir/reference_log_probs.pt`); `"adapter"` uses the model with its PEFT
            adapter disabled; `"copy"` keeps a frozen copy of the initial model (twice the weights in memory).
            `"auto"` is `"adapter"` for PEFT models, else `"precompute"`, except for `asft`, which needs the
            reference's whole next-token distribution (a live forward, not the table): `"copy"` there.
        skip_invalid_records (`bool`, *optional*, defaults to `False`):
            Invalid training records (missing or mistyped fields, empty completions, unknown roles, bad JSONL
            lines, records whose loss tokens are all cut by `max_length`) are an error naming the first one.
            With `True` they are dropped instead, and their count is logged.
        max_nonfinite_steps (`int`, *optional*, defaults to `10`):
            An optimizer step whose loss or gradient is not finite is skipped (no parameter, optimizer-state or
            LR-scheduler update; counted in the `nonfinite_skipped` metric). Training stops with an error after
            this many such steps in a row.

    Defaults that differ from TRL's `SFTConfig`, so that the same config runs on a laptop CPU and on a GPU:

        bf16 (`bool` or `None`, *optional*, defaults to `None`):
            Unset: what `accelerate launch` asked for (its config's or flag's `mixed_precision`), else bf16 mixed
            precision where the accelerator supports it (an Ampere or newer GPU, XPU, NPU, ...), full precision on
            a CPU or older GPU. SFTConfig's unset value is always `True`, which fails on a CPU.
        gradient_checkpointing (`bool` or `None`, *optional*, defaults to `None`):
            Deprecated alias of `activation_checkpointing` (transformers 5). With neither set, activation
            checkpointing is on, as in SFTConfig, without transformers' deprecation warning.
        dataloader_pin_memory:
            Turned off where there is no accelerator to pin memory for (it only warns there).
    """

    learning_rate: float = field(
        default=2e-5,
        metadata={
            "help": "Initial learning rate for AdamW. The paper used 1e-6 for PSFT and 2e-5 for SFT (7B)."
        },
    )
    loss_type: str = field(
        default="psft",
        metadata={
            "help": "Registered objective: 'psft', 'sft' (alias 'nll'), 'dft', or any name in psft.core.losses.LOSSES."
        },
    )
    epsilon: float = field(
        default=0.2,
        metadata={
            "help": "Lower clip of the ratio (1 - epsilon); with advantage +1 it only feeds clip_ratio/low."
        },
    )
    epsilon_high: float = field(
        default=0.28,
        metadata={"help": "Upper clip of the ratio (1 + epsilon_high): tokens above it get zero gradient."},
    )
    log_ratio_clip: float = field(
        default=20.0,
        metadata={"help": "Clamp of the log-ratio before exp, keeping the ratio finite (verl uses 20)."},
    )
    mini_batches_per_rollout: int = field(
        default=8,
        metadata={
            "help": "K: optimizer steps per rollout; the old policy is refreshed every K steps. K=1 (one epoch) is SFT."
        },
    )
    rollout_epochs: int = field(
        default=1,
        metadata={"help": "Passes over each rollout against the same old policy (PPO's ppo_epochs)."},
    )

    old_policy: str = field(
        default="rollout",
        metadata={
            "help": "'rollout': old policy = model at each rollout start (PSFT); 'fixed': the initial model (ablation).",
            "choices": ["rollout", "fixed"],
        },
    )
    sft_warmup_steps: int = field(
        default=0,
        metadata={"help": "Plain SFT optimizer steps before the objective takes over (PSFT-warm-up)."},
    )
    beta: float = field(
        default=0.5,
        metadata={"help": "KL-to-reference weight of loss_type='sft_kl' (paper: 0.5)."},
    )
    asft_lambda: float = field(
        default=0.1,
        metadata={"help": "KL-to-reference weight of loss_type='asft'."},
    )
    eaft_alpha: float = field(
        default=1.0,
        metadata={"help": "Exponent of the normalised entropy weighting each token in loss_type='eaft'."},
    )
    eaft_entropy: str = field(
        default="topk",
        metadata={
            "help": "EAFT weight: 'topk' (LLaMA-Factory: top-20 renormalised entropy / 3.0) or 'full' "
            "(whole-vocabulary entropy / ln V).",
            "choices": ["topk", "full"],
        },
    )
    disable_dropout: bool = field(
        default=True,
        metadata={
            "help": "Turn the model's dropout off before training (as TRL's DPO/GRPO); with it on, psft's ratios "
            "include dropout noise."
        },
    )
    reference: str = field(
        default="auto",
        metadata={
            "help": "Source of reference log-probs: 'precompute' (stored once), 'adapter' (PEFT adapter disabled), "
            "'copy' (frozen model copy, 2x weights), 'auto' (adapter with PEFT, else precompute; copy for asft).",
            "choices": ["auto", "precompute", "adapter", "copy"],
        },
    )
    skip_invalid_records: bool = field(
        default=False,
        metadata={
            "help": "Drop invalid training records with a logged count instead of failing on the first."
        },
    )
    max_nonfinite_steps: int = field(
        default=10,
        metadata={"help": "Non-finite loss/gradient steps are skipped; stop after this many in a row."},
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Unset: on where the GPU/accelerator supports it, off on a CPU."
        },
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of activation_checkpointing. With neither set, checkpointing is on (TRL)."
        },
    )

    def __post_init__(self):
        self._default_precision_and_memory()
        self.loss_type = LOSS_ALIASES.get(self.loss_type, self.loss_type)
        try:
            spec = get_loss(self.loss_type)
        except ValueError as err:
            raise UserError(f"loss_type: {err}") from None
        if self.epsilon <= 0 or self.epsilon >= 1:
            raise UserError(f"epsilon must be in (0, 1), got {self.epsilon}")
        if self.epsilon_high <= 0:
            raise UserError(f"epsilon_high must be > 0, got {self.epsilon_high}")
        if self.log_ratio_clip <= 0:
            raise UserError(f"log_ratio_clip must be > 0, got {self.log_ratio_clip}")
        if self.mini_batches_per_rollout < 1:
            raise UserError(f"mini_batches_per_rollout must be >= 1, got {self.mini_batches_per_rollout}")
        if self.rollout_epochs < 1:
            raise UserError(f"rollout_epochs must be >= 1, got {self.rollout_epochs}")
        if self.old_policy not in ("rollout", "fixed"):
            raise UserError(f"old_policy must be 'rollout' or 'fixed', got {self.old_policy!r}")
        if self.eaft_entropy not in ("topk", "full"):
            raise UserError(f"eaft_entropy must be 'topk' or 'full', got {self.eaft_entropy!r}")
        if self.reference not in ("auto", "precompute", "adapter", "copy"):
            raise UserError(f"reference must be auto, precompute, adapter or copy, got {self.reference!r}")
        if self.sft_warmup_steps < 0:
            raise UserError(f"sft_warmup_steps must be >= 0, got {self.sft_warmup_steps}")
        if self.max_length is not None and self.max_length < 2:  # a loss token needs a token before it
            raise UserError(f"max_length must be >= 2 (or null: no truncation), got {self.max_length}")
        if self.sft_warmup_steps > 0 and self.rollout_epochs > 1:
            raise UserError("sft_warmup_steps and rollout_epochs > 1 cannot be combined; set one of them")
        if self.max_nonfinite_steps < 1:
            raise UserError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1 to form a mini-batch, got {getattr(self, name)}")
        if 0 < self.max_steps <= self.sft_warmup_steps and "old_log_probs" in spec.tensors:
            warnings.warn(
                f"sft_warmup_steps={self.sft_warmup_steps} covers all max_steps={self.max_steps}: no step uses "
                f"loss_type={self.loss_type!r}. Lower sft_warmup_steps or raise max_steps.",
                UserWarning,
                stacklevel=3,
            )
        if self.beta < 0 or self.asft_lambda < 0:
            raise UserError(f"beta and asft_lambda must be >= 0, got {self.beta} and {self.asft_lambda}")
        refreshed = self.old_policy == "rollout"
        if (
            "old_log_probs" in spec.tensors
            and refreshed
            and self.mini_batches_per_rollout == 1
            and self.rollout_epochs == 1
        ):
            warnings.warn(
                f"loss_type={self.loss_type!r} with mini_batches_per_rollout=1 and rollout_epochs=1 is identical to "
                "SFT: every ratio is 1. Set mini_batches_per_rollout > 1 (the paper uses 8) for a trust region.",
                UserWarning,
                stacklevel=3,
            )
        super().__post_init__()

    def _default_precision_and_memory(self) -> None:
        """Fill the unset fields that TRL's defaults would make fail or warn on a CPU (see the docstring)."""
        from transformers.utils import is_torch_bf16_gpu_available

        accelerator = not self.use_cpu and accelerator_available()
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()  # set by `accelerate launch`
        if self.bf16 is None and launched in ("no", "fp16", "bf16", "fp8"):
            # a DeepSpeed config with `bf16.enabled` from the launch must agree with the Trainer's bf16
            self.bf16 = launched == "bf16"
        elif self.bf16 is None:
            self.bf16 = not self.fp16 and accelerator and is_torch_bf16_gpu_available()
        if self.gradient_checkpointing is None and self.activation_checkpointing is None:
            self.activation_checkpointing = True
        if self.dataloader_pin_memory and not accelerator:
            self.dataloader_pin_memory = False

    @property
    def needs_old_log_probs(self) -> bool:
        """Whether the objective reads the old policy's log-probs."""
        return "old_log_probs" in get_loss(self.loss_type).tensors

    @property
    def needs_reference(self) -> bool:
        """Whether training needs the reference (initial) model's log-probs."""
        spec = get_loss(self.loss_type)
        return (
            "ref_log_probs" in spec.tensors
            or self.needs_reference_logits
            or (self.old_policy == "fixed" and self.needs_old_log_probs)
        )

    @property
    def needs_reference_logits(self) -> bool:
        """Whether the objective reads the reference's whole next-token distribution (a live reference forward)."""
        return "ref_logits" in get_loss(self.loss_type).tensors


def accelerator_available() -> bool:
    """Whether torch sees a GPU or other accelerator (CUDA, XPU, MPS, ...)."""
    import torch

    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
