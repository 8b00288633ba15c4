"""Tiny trainers and recorders shared by the trainer tests: everything built locally, no download."""

import copy

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from psft import PSFTConfig, PSFTTrainer
from psft.data.tiny import make_char_tokenizer, make_tiny_llama

TOKENIZER = make_char_tokenizer()


def prompt_completion_data(n=64):
    """Records of varied lengths, so padding and token counts differ between micro-batches."""
    rows = []
    for i in range(n):
        a, b = i % 13, (7 * i) % 11
        rows.append({"prompt": f"{a}+{b}" + "?" * (i % 5) + "=", "completion": str(a + b) + "!" * (i % 3)})
    return Dataset.from_list(rows)


def common_args(**overrides):
    args = dict(
        output_dir="unused",
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        max_steps=-1,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        seed=0,
        dataloader_drop_last=False,
        disable_tqdm=True,
    )
    args.update(overrides)
    return args


def make_trainer(tmp_path, data=None, trainer_cls=PSFTTrainer, callbacks=None, tied=False, **overrides):
    """A trainer on the tiny Llama (`tied`: its output head is its input embedding) and the given data."""
    config_cls = SFTConfig if trainer_cls is SFTTrainer else PSFTConfig
    args = config_cls(**common_args(output_dir=str(tmp_path / "out"), **overrides))
    return trainer_cls(
        model=make_tiny_llama(TOKENIZER, seed=0, tie_word_embeddings=tied),
        args=args,
        train_dataset=data if data is not None else prompt_completion_data(),
        processing_class=TOKENIZER,
        callbacks=callbacks,
    )


def params(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def assert_same_params(a, b, atol, rtol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")


def max_param_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


class NaNAt(PSFTTrainer):
    """Multiplies the loss by NaN at the optimizer steps listed (0-based global steps)."""

    nan_steps: tuple = ()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training and self.state.global_step in self.nan_steps:
            loss = loss * float("nan")
        return loss


class Recorder(PSFTTrainer):
    """Records every training micro-batch with the step it was used at and the old log-probs it carried."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []
        self.old_pass_calls = 0

    def _old_log_probs(self, micro_batch):
        self.old_pass_calls += 1
        return super()._old_log_probs(micro_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:
            old, ref = inputs.get("old_log_probs"), inputs.get("ref_log_probs")
            self.records.append(
                dict(
                    step=self.state.global_step,
                    rollout=self.run_state.rollout_index,
                    old=None if old is None else old.clone(),
                    ref=None if ref is None else ref.clone(),
                    input_ids=inputs["input_ids"].clone(),
                    attention_mask=inputs["attention_mask"].clone(),
                    labels=inputs["labels"].clone(),
                )
            )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class Snapshots(TrainerCallback):
    """The model's parameters at the start of every optimizer step."""

    def __init__(self):
        self.by_step = {}

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.by_step[state.global_step] = copy.deepcopy(model.state_dict())


def reference_log_probs(state_dict, record):
    """Per-token log-probs of the recorded micro-batch's labels under the given parameters (plain logits)."""
    model = make_tiny_llama(TOKENIZER, seed=0)
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=record["input_ids"], attention_mask=record["attention_mask"]).logits[:, :-1]
    labels = record["labels"][:, 1:]
    log_probs = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return log_probs * labels.ne(-100)
