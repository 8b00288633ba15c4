"""EvalCallback: accuracy and drift every N steps land in trainer.state.log_history, for any Trainer."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from eval_support import ANSWERS, chat
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer

from psft.data.tiny import make_char_tokenizer, make_tiny_llama
from psft.eval import EvalCallback

EVAL_ROWS = [{"prompt": chat(p), "answer": a, "task": "mem"} for p, a in ANSWERS.items()]
DRIFT_TEXTS = ["some held-out text", "and another line of it"]


def _callback(tmp_path) -> EvalCallback:
    return EvalCallback(
        make_char_tokenizer(),
        every_n_steps=3,
        data=EVAL_ROWS,
        drift_texts=DRIFT_TEXTS,
        generation_kwargs={"max_new_tokens": 6},
        output_dir=tmp_path / "evals",
    )


def _check_history(trainer, tmp_path) -> None:
    logged = [h for h in trainer.state.log_history if "gen/avg@1" in h]
    assert [h["step"] for h in logged] == [0, 3, 6, 7]  # start, every 3 steps, end
    assert all({"gen/mem/avg@1", "drift/kl", "drift/logprob_change"} <= set(h) for h in logged)
    assert abs(logged[0]["drift/kl"]) < 1e-5  # before any update the model is its base
    assert logged[-1]["drift/kl"] > 1e-4
    assert all("epoch" in h for h in logged)  # went through trainer.log, as integrations see it
    assert (tmp_path / "evals" / "samples_step7.jsonl").is_file()
    assert (tmp_path / "evals" / "drift_base_stats.safetensors").is_file()


def test_callback_with_plain_trainer(tmp_path):
    torch.set_num_threads(1)
    tok = make_char_tokenizer()
    model = make_tiny_llama(tok)
    ids = [tok("hello world " * 2)["input_ids"]] * 16
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=7,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=100,
        use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    callback = _callback(tmp_path).attach(trainer)
    assert callback in trainer.callback_handler.callbacks
    trainer.train()
    _check_history(trainer, tmp_path)


def test_callback_with_trl_sft_trainer(tmp_path):
    tok = make_char_tokenizer()
    model = make_tiny_llama(tok)
    rows = [
        {"prompt": chat(p), "completion": [{"role": "assistant", "content": a}]} for p, a in ANSWERS.items()
    ]
    args = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=7,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_steps=100,
        use_cpu=True,
    )
    callback = _callback(tmp_path)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows * 4),
        processing_class=tok,
        callbacks=[callback],
    )
    callback.attach(trainer)
    assert trainer.callback_handler.callbacks.count(callback) == 1
    trainer.train()
    _check_history(trainer, tmp_path)


def test_no_training_log_is_lost_when_evaluation_and_logging_share_a_step(tmp_path):
    """`Trainer.log` from `on_step_end` clears `should_log`: without care, the training entry of every step that
    is both an evaluation and a logging step disappears (here steps 3 and 6)."""
    torch.set_num_threads(1)
    tok = make_char_tokenizer()
    ids = [tok("hello world " * 2)["input_ids"]] * 16
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=7,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        logging_steps=3,
        use_cpu=True,
    )
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    trainer = Trainer(model=make_tiny_llama(tok), args=args, train_dataset=data)
    callback = EvalCallback(tok, every_n_steps=3, data=EVAL_ROWS, generation_kwargs={"max_new_tokens": 2})
    callback.attach(trainer)
    trainer.train()
    history = trainer.state.log_history
    assert [h["step"] for h in history if "loss" in h] == [3, 6]
    assert [h["step"] for h in history if "gen/avg@1" in h] == [0, 3, 6, 7]
    assert callback.seconds > 0


def test_every_n_steps_must_be_positive():
    with pytest.raises(ValueError):
        EvalCallback(make_char_tokenizer(), every_n_steps=0)
