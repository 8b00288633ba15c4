"""The built-in base model: resolvable by name, loads offline, small, and solves each general task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from psft.data.models import BUILTIN_MODEL_NAME, builtin_model_path, resolve_model_name
from psft.data.tiny import make_char_tokenizer
from psft.eval.checkers import get_checker
from psft.eval.generate import generate as decode
from psft.tasks import GENERAL_TASKS, IN_DOMAIN_TASK, generate


@pytest.fixture(scope="module")
def base():
    """The shipped model and tokenizer, loaded with the hub switched off."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        path = resolve_model_name(BUILTIN_MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _accuracy(model, tokenizer, task: str, n: int = 100) -> float:
    """Greedy accuracy on the first `n` of the held-out problems that metrics.json was measured on."""
    examples = generate(task, n, seed=0, split="test")
    chats = [[{"role": "user", "content": e.prompt}] for e in examples]
    outputs = [outs[0] for outs in decode(model, tokenizer, chats, max_new_tokens=24)]
    return sum(bool(get_checker(e.checker)(o, e.answer)) for e, o in zip(examples, outputs, strict=True)) / n


def test_name_resolves_to_the_shipped_files():
    path = Path(builtin_model_path())
    assert resolve_model_name("psft/tiny-base") == str(path)
    assert resolve_model_name("some/other-model") == "some/other-model"
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert sum(f.stat().st_size for f in path.iterdir()) <= 20 * 2**20


def test_shipped_model_is_a_small_llama_with_the_char_tokenizer(base):
    model, tokenizer = base
    assert model.config.model_type == "llama"
    assert 1_000_000 <= model.num_parameters() <= 10_000_000
    reference = make_char_tokenizer()
    assert tokenizer.get_vocab() == reference.get_vocab()
    assert (
        tokenizer.chat_template == reference.chat_template and "{% generation %}" in tokenizer.chat_template
    )
    assert (
        tokenizer.eos_token == "<|im_end|>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    )


@pytest.mark.parametrize("task", GENERAL_TASKS)
def test_shipped_model_solves_each_general_task(base, task):
    model, tokenizer = base
    assert _accuracy(model, tokenizer, task) >= 0.8


def test_in_domain_task_is_new_to_the_base_model(base):
    model, tokenizer = base
    assert _accuracy(model, tokenizer, IN_DOMAIN_TASK) <= 0.2


def test_metrics_file_records_the_pretraining_accuracy():
    metrics = json.loads((Path(builtin_model_path()) / "metrics.json").read_text())
    assert set(metrics["accuracy"]) == set(GENERAL_TASKS)
    assert min(metrics["accuracy"].values()) >= 0.8
