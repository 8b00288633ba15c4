"""The old-policy and reference passes compute exactly what the training forward computes at the same parameters,
in every precision: at learning rate 0 the PSFT ratio is exactly 1 and the KL to the reference exactly 0.

One process here; `test_engines.py` runs the same checks on FSDP2 and DeepSpeed ZeRO-3 processes.
"""

import pytest
import torch
from trainer_support import TOKENIZER, common_args, prompt_completion_data
from transformers import Gemma2Config, Gemma2ForCausalLM

from psft import PSFTConfig, PSFTTrainer
from psft.data.tiny import make_tiny_llama


def softcapped_gemma2():
    """A Gemma2 with final-logit softcapping and a sharp head: a head convention the old pass must follow."""
    config = Gemma2Config(
        vocab_size=len(TOKENIZER),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=3.0,
        pad_token_id=TOKENIZER.pad_token_id,
    )
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(config)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    return model


MODELS = {
    "llama": lambda: make_tiny_llama(TOKENIZER, seed=0),
    "llama_bf16_weights": lambda: make_tiny_llama(TOKENIZER, seed=0).to(torch.bfloat16),
    "gemma2_softcap": softcapped_gemma2,
}


def train_at_lr_zero(tmp_path, model, **overrides):
    args = dict(learning_rate=0.0, max_steps=8, mini_batches_per_rollout=4, gradient_accumulation_steps=2)
    args = PSFTConfig(**common_args(output_dir=str(tmp_path / "out"), **{**args, **overrides}))
    trainer = PSFTTrainer(
        model=model, args=args, train_dataset=prompt_completion_data(64), processing_class=TOKENIZER
    )
    trainer.train()
    return [log for log in trainer.state.log_history if "nll" in log]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_unchanged_model_has_ratio_exactly_one(tmp_path, name, bf16):
    logs = train_at_lr_zero(tmp_path, MODELS[name](), bf16=bf16)
    assert len(logs) == 8
    assert [log["ratio/max"] for log in logs] == [1.0] * 8
    assert [log["clip_ratio/high"] for log in logs] == [0.0] * 8
    assert [log["clip_ratio/low"] for log in logs] == [0.0] * 8
    assert [log["ratio/mean"] for log in logs] == [1.0] * 8


@pytest.mark.parametrize("reference", ["precompute", "copy"])
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16_autocast"])
def test_unchanged_model_has_kl_to_reference_exactly_zero(tmp_path, reference, bf16):
    logs = train_at_lr_zero(
        tmp_path, make_tiny_llama(TOKENIZER, seed=0), bf16=bf16, loss_type="sft_kl", reference=reference
    )
    assert [log["kl_ref"] for log in logs] == [0.0] * 8


def test_bf16_autocast_really_runs_the_training_forward_in_bf16(tmp_path):
    """Guards the tests above: under `bf16=True` the log-probs differ from fp32 ones, so equal ratios are not
    equal only because both passes ignored autocast."""
    fp32 = train_at_lr_zero(tmp_path / "fp32", make_tiny_llama(TOKENIZER, seed=0), bf16=False, max_steps=1)
    bf16 = train_at_lr_zero(tmp_path / "bf16", make_tiny_llama(TOKENIZER, seed=0), bf16=True, max_steps=1)
    assert fp32[0]["nll"] != bf16[0]["nll"]
