"""Preference metrics of a model on held-out pairs: the chosen and rejected completions' summed log-probs,
reward margins and accuracy against a reference model (PreferenceProbe, for the DPO chain's report)."""

from __future__ import annotations

from typing import Any

import torch
from datasets import Dataset
from trl import DPOConfig
from trl.trainer.dpo_trainer import DataCollatorForPreference

from psft._compat import check_hooks
from psft.core.logprobs import ensure_fused_head, label_log_probs
from psft.data.models import load_model, load_tokenizer
from psft.errors import UserError


def tokenize_pairs(
    tokenizer: Any,
    rows: list[dict[str, Any]],
    max_length: int | None = None,
    truncation_mode: str = "keep_start",
) -> list[dict[str, list[int]]]:
    """`prompt_ids`, `chosen_ids`, `rejected_ids` of explicit-prompt records, made by TRL's own dataset
    preparation (`DPOTrainer._prepare_dataset`): chat template for conversational records, EOS appended to plain
    completions, the completion starting where prompt and prompt+completion diverge, and (with `keep_start`) the
    pairs whose prompt fills `max_length` left out, as TRL drops them.

    Contract with TRL 1.16 (a private method, called unbound): `_prepare_dataset(self, dataset,
    processing_class, args, dataset_name)` reads only `self._tokenizer` (its EOS) and `args.dataset_num_proc`,
    `args.max_length`, `args.truncation_mode`, and needs no trained model; its signature is checked (`psft._compat.HOOKS`) so that
    an upstream change fails loudly instead of scoring other tokens than DPO trains on."""
    from types import SimpleNamespace

    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled
    from trl import DPOTrainer

    if not rows:
        return []
    check_hooks()  # psft._compat.HOOKS["trl.DPOTrainer._prepare_dataset"]: one line naming the supported range
    prepare = DPOTrainer._prepare_dataset
    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode=truncation_mode)
    columns = [c for c in ("prompt", "chosen", "rejected", "tools", "chat_template_kwargs") if c in rows[0]]
    dataset = Dataset.from_list([{c: row[c] for c in columns} for row in rows])
    bars = is_progress_bar_enabled()
    disable_progress_bar()  # a progress bar per scoring would drown the chain's lines
    try:
        prepared = prepare(SimpleNamespace(_tokenizer=tokenizer), dataset, tokenizer, args, "held-out")
    finally:
        if bars:
            enable_progress_bar()
    keys = ("prompt_ids", "chosen_ids", "rejected_ids")
    return [{k: row[k] for k in keys} for row in prepared.select_columns(list(keys))]


def tokenize_pair(tokenizer: Any, row: dict[str, Any]) -> dict[str, list[int]]:
    """`tokenize_pairs` of one explicit-prompt record, untruncated."""
    return tokenize_pairs(tokenizer, [row])[0]


@torch.no_grad()
def pair_log_probs(
    model: Any,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    *,
    max_length: int | None = 1024,
    truncation_mode: str = "keep_start",
    batch_size: int = 32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs `(chosen, rejected)` of each pair's completion tokens under `model`: DPO's sequence
    log-probs, tokenised, truncated and padded as `DPOTrainer` does (pairs whose prompt fills `max_length`
    are left out, as TRL drops them)."""
    pairs = tokenize_pairs(tokenizer, rows, max_length, truncation_mode)
    if not pairs:
        raise UserError("preference metrics: no pair left to score (every prompt fills max_length)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collate = DataCollatorForPreference(
        pad_token_id=pad_id, max_length=max_length, truncation_mode=truncation_mode
    )
    ensure_fused_head(model)  # a model fresh from from_pretrained has no fused head yet
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(pairs), batch_size):
            batch = {k: v.to(model.device) for k, v in collate(pairs[start : start + batch_size]).items()}
            labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
            logps = label_log_probs(
                model,
                {
                    "input_ids": batch["input_ids"],
                    "attention_mask": batch["attention_mask"],
                    "labels": labels,
                },
            ).sum(-1)
            c, r = logps.cpu().chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def preference_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    beta: float,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> dict[str, float]:
    """DPO's implicit reward r = beta * (log pi - log pi_ref) of each completion: `accuracy`, the share of pairs
    with r(chosen) > r(rejected) (ties count as wrong, as in TRL), and `reward_margin`, the mean of
    r(chosen) - r(rejected). Without a reference, log pi_ref = 0 (the log-probs themselves)."""
    margin = chosen - rejected
    if ref_chosen is not None:
        margin = margin - (ref_chosen - ref_rejected)
    margin = beta * margin.double()
    return {"accuracy": float((margin > 0).double().mean()), "reward_margin": float(margin.mean())}


class PreferenceProbe:
    """The chain's preference metrics on held-out pairs, for `psft.stages.chain.run_chain`.

    Against the base model (a reference common to every start, so before-DPO numbers compare): `accuracy`,
    `reward_margin`; reference-free: `logp_margin` (mean log pi(chosen) - log pi(rejected)); after DPO also
    against the DPO reference, the start (`accuracy_vs_start`, `reward_margin_vs_start`: what DPO optimised,
    TRL's `rewards/accuracies` and `rewards/margins`). The start's log-probs are kept between its two calls."""

    def __init__(
        self, rows: list[dict[str, Any]], args: DPOConfig, base_model: str | None = None, batch_size: int = 32
    ):
        self.rows, self.beta, self.base_model = rows, args.beta, base_model
        self.score = dict(
            max_length=args.max_length, truncation_mode=args.truncation_mode, batch_size=batch_size
        )
        self.base: tuple[torch.Tensor, torch.Tensor] | None = None
        if base_model is not None:
            model = load_model(base_model)
            self.base = pair_log_probs(model, load_tokenizer(base_model), rows, **self.score)
        self.starts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, model: Any, tokenizer: Any, name: str, phase: str) -> dict[str, Any]:
        chosen, rejected = pair_log_probs(model, tokenizer, self.rows, **self.score)
        out = {"num_pairs": len(chosen), "reference": self.base_model, "beta": self.beta}
        out |= preference_metrics(chosen, rejected, self.beta, *(self.base or ()))
        out["logp_margin"] = float((chosen - rejected).double().mean())
        if phase == "before":
            self.starts[name] = (chosen, rejected)
        else:
            vs_start = preference_metrics(chosen, rejected, self.beta, *self.starts.pop(name))
            out |= {f"{k}_vs_start": v for k, v in vs_start.items()}
        return {"preference": out}
